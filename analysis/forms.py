"""The form that asks for an analysis: a GitHub URL, checked by the service, not here."""

from __future__ import annotations

from django import forms

from analysis.services import Options


class AnalysisRequestForm(forms.Form):
    url = forms.CharField(
        label="GitHub repository URL",
        strip=True,
        widget=forms.URLInput(
            attrs={
                "placeholder": "https://github.com/OWNER/REPO",
                "autocomplete": "url",
                "spellcheck": "false",
                "autofocus": True,
            }
        ),
        help_text="A folder of a monorepo works too: https://github.com/OWNER/REPO/tree/REF/FOLDER.",
    )
    introspect = forms.BooleanField(
        label="Start the server to list its tools",
        required=False,
        initial=True,
        help_text="Catwalk runs the published package once, without credentials, in a sandbox.",
    )

    def options(self) -> Options:
        return Options(introspect=self.cleaned_data["introspect"])
