"""Which files of a checkout are the server's own source code."""

from __future__ import annotations

import re
from pathlib import PurePosixPath

from analysis.checkout import Checkout

LANGUAGES = {
    ".js": "javascript",
    ".cjs": "javascript",
    ".mjs": "javascript",
    ".jsx": "javascript",
    ".ts": "javascript",
    ".tsx": "javascript",
    ".mts": "javascript",
    ".cts": "javascript",
    ".py": "python",
    ".go": "go",
    ".rs": "rust",
}
# Tests, fixtures, examples and docs read variables that only a developer sets.
_NOT_SERVER = re.compile(
    r"(?:^|/)(?:tests?|__tests__|__mocks__|spec|specs|e2e|fixtures?|examples?|docs?|"
    r"benchmarks?|\.github|\.devcontainer|helm|evals?)/"
    r"|(?:^|/)(?:test_[^/]*|[^/]*_test|conftest|[^/]*\.(?:test|spec|stories))\.[a-z]+$"
    r"|\.d\.[cm]?ts$|\.min\.js$",
    re.IGNORECASE,
)


def source_files(checkout: Checkout) -> list[tuple[str, str]]:
    """(path, language) of each source file that belongs to the server itself."""
    found = []
    for path in checkout.files:
        language = LANGUAGES.get(PurePosixPath(path).suffix.lower())
        if language and not _NOT_SERVER.search(path):
            found.append((path, language))
    return found
