// Catwalk's only script of its own: copy buttons and show/hide for secret fields. Everything
// else is htmx or plain forms. Delegated from the document, so content htmx swaps in works too.
"use strict";

document.addEventListener("click", async (event) => {
  const copy = event.target.closest("[data-copy]");
  if (copy) {
    const source = document.getElementById(copy.dataset.copy);
    if (!source) return;
    const label = copy.dataset.label || copy.textContent;
    copy.dataset.label = label;
    try {
      await navigator.clipboard.writeText(source.textContent.trim());
      copy.textContent = "Copied";
    } catch {
      // No clipboard (an insecure origin, or permission refused): select the text instead.
      const range = document.createRange();
      range.selectNodeContents(source);
      const selection = window.getSelection();
      selection.removeAllRanges();
      selection.addRange(range);
      copy.textContent = "Press Ctrl+C";
    }
    setTimeout(() => { copy.textContent = label; }, 2000);
    return;
  }
  const reveal = event.target.closest("[data-reveal]");
  if (reveal) {
    const input = document.getElementById(reveal.dataset.reveal);
    if (!input) return;
    const shown = input.type === "password";
    input.type = shown ? "text" : "password";
    reveal.textContent = shown ? "Hide" : "Show";
    reveal.setAttribute("aria-pressed", String(shown));
    input.focus();
  }
});
