"""Forms for deployments: a new deployment's name and process model, the credentials a server
needs, generated from its analysis, and a user's own GitHub token."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from decimal import Decimal
from typing import Any

from django import forms
from django.core.exceptions import ValidationError
from django.utils.html import conditional_escape
from django.utils.safestring import SafeString

from deployments.github_tokens import validate_github_token
from deployments.models import (
    CREDENTIAL_VALUE_MAX_BYTES,
    ENV_NAME_VALIDATOR,
    SLUG_VALIDATOR,
    ProcessModel,
    Runtime,
)
from deployments.runtimes.base import available_runtimes, runtimes_for

MAX_VALUE_BYTES = CREDENTIAL_VALUE_MAX_BYTES
RESERVED_PREFIX = "CATWALK_"
EXTRA_FIELD = "extra_environment"
KEEP_STORED = "Already stored: leave blank to keep the stored value."
BOOLEAN_CHOICES = [("true", "true"), ("false", "false")]
# Lets the page find secret inputs to give them a show/hide toggle.
SECRET_INPUT_ATTRS = {"class": "secret", "autocomplete": "new-password", "spellcheck": "false"}


def environment_variables(document: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The environment variables of a server.json document's first package ([] without one)."""
    packages = document.get("packages") or []
    return list(packages[0].get("environmentVariables") or []) if packages else []


def _within_size(value: str) -> None:
    if len(value.encode()) > MAX_VALUE_BYTES:
        raise ValidationError("A value may be at most 32 KiB.", code="max_length")


def _is_usable_name(name: str) -> bool:
    try:
        ENV_NAME_VALIDATOR(name)
    except ValidationError:
        return False
    return not name.startswith(RESERVED_PREFIX)


class NumberField(forms.DecimalField):
    """An integer or decimal, cleaned to its canonical text: `+1.50` → `1.5`, `1e3` → `1000`."""

    def validate(self, value: Decimal | None) -> None:
        super().validate(value)
        # `1e999999999` is short to send but would expand to a gigabyte of digits.
        if value is not None:
            _, digits, exponent = value.as_tuple()
            if len(digits) + abs(int(exponent)) > MAX_VALUE_BYTES:
                raise ValidationError("This number is too long.", code="max_length")

    def clean(self, value: Any) -> str:
        number = super().clean(value)
        if number is None:
            return ""
        if number.is_zero():
            return "0"
        text = format(number, "f")  # exact: no rounding to the context's precision
        return text.rstrip("0").rstrip(".") if "." in text else text


def _choices(
    values: list[tuple[str, str]], initial: str | None, required: bool, stored: bool
) -> dict[str, Any]:
    """Choices and the preselected one. The empty choice is there whenever a blank answer is
    allowed, and also when nothing is preselected, so no value is ever chosen by accident."""
    if initial not in dict(values):
        initial = None
    if stored:
        empty = "(keep the stored value)"
    elif not required:
        empty = "(not set)"
    elif initial is None:
        empty = "(choose)"
    else:
        return {"choices": values, "initial": initial}
    return {"choices": [("", empty), *values], "initial": initial}


class CredentialForm(forms.Form):
    """One field per environment variable of an analysed server (MCP Registry server.json
    `environmentVariables`), plus free-form `NAME=VALUE` lines for any the analysis missed.

    `existing` names the variables a deployment already stores: they are never required and
    never prefilled, so leaving them blank keeps the stored value.
    """

    extra_environment = forms.CharField(
        label="Other variables",
        required=False,
        strip=False,
        widget=forms.Textarea(attrs={"rows": 4, "spellcheck": "false"}),
        help_text="One NAME=VALUE per line, for variables not listed above. "
        "Blank lines and lines starting with # are ignored.",
    )

    def __init__(
        self,
        *,
        variables: Iterable[Mapping[str, Any]],
        data: Mapping[str, Any] | None = None,
        existing: Collection[str] = frozenset(),
        **kwargs: Any,
    ) -> None:
        super().__init__(data=data, **kwargs)
        generated: dict[str, forms.Field] = {}
        for variable in sorted(variables, key=_display_rank):
            name = str(variable.get("name", ""))
            # A name no process can receive (or one of Catwalk's own) gets no field.
            if _is_usable_name(name) and name not in generated and name != EXTRA_FIELD:
                generated[name] = _field_for(variable, stored=name in existing)
        self.variable_names = list(generated)
        self.fields = {**generated, EXTRA_FIELD: self.fields[EXTRA_FIELD]}

    def clean_extra_environment(self) -> dict[str, str]:
        environment: dict[str, str] = {}
        errors = []
        for number, line in enumerate(self.cleaned_data[EXTRA_FIELD].splitlines(), start=1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            name, equals, value = (part.strip() for part in line.partition("="))
            problem = self._extra_line_problem(name, equals, value, environment)
            if problem:
                errors.append(ValidationError(f"Line {number}: {problem}", code="invalid_line"))
            else:
                environment[name] = value
        if errors:
            raise ValidationError(errors)
        return environment

    def _extra_line_problem(
        self, name: str, equals: str, value: str, seen: Mapping[str, str]
    ) -> str:
        # Messages never repeat a value, nor a malformed name: either may be part of a secret.
        if not equals:
            return "write NAME=VALUE."
        try:
            ENV_NAME_VALIDATOR(name)
        except ValidationError:
            return "a name uses letters, digits and underscores, and does not start with a digit."
        if name.startswith(RESERVED_PREFIX):
            return f"{name}: names starting {RESERVED_PREFIX} are reserved for Catwalk."
        if name in self.variable_names:
            return f"{name} has its own field above."
        if name in seen:
            return f"{name} is given twice."
        if not value:
            return f"{name} has no value."
        if len(value.encode()) > MAX_VALUE_BYTES:
            return f"the value of {name} is longer than 32 KiB."
        return ""

    def environment(self) -> dict[str, str]:
        """The variables given a value, once the form is valid; blank ones are left out
        (unset, or kept as stored)."""
        filled = {name: self.cleaned_data[name] for name in self.variable_names}
        return {
            **{name: value for name, value in filled.items() if value},
            **self.cleaned_data[EXTRA_FIELD],
        }


def _display_rank(variable: Mapping[str, Any]) -> int:
    """Required variables first, then secrets, then the rest (sorting is stable)."""
    if variable.get("isRequired"):
        return 0
    return 1 if variable.get("isSecret") else 2


def _help_text(description: str, stored: bool) -> SafeString:
    # Descriptions come from a repository's own documentation, and templates may print help
    # text unescaped: escape it here.
    return conditional_escape(
        " ".join(part for part in (description, KEEP_STORED if stored else "") if part)
    )


def _field_for(variable: Mapping[str, Any], stored: bool) -> forms.Field:
    name = str(variable["name"])
    required = bool(variable.get("isRequired")) and not stored
    default = variable.get("default")
    # Prefilling a stored variable would overwrite it with the default on every update.
    initial = None if stored or default is None else str(default)
    common: dict[str, Any] = {
        "label": name,
        "required": required,
        "help_text": _help_text(str(variable.get("description") or ""), stored),
    }
    if variable.get("isSecret"):
        return forms.CharField(
            strip=False,
            widget=forms.PasswordInput(render_value=False, attrs=SECRET_INPUT_ATTRS),
            validators=[_within_size],
            **common,
        )
    if variable.get("choices"):
        values = [(str(choice), str(choice)) for choice in variable["choices"]]
        return forms.ChoiceField(**_choices(values, initial, required, stored), **common)
    match variable.get("format"):
        case "number":
            return NumberField(initial=initial, **common)
        case "boolean":
            initial = initial.lower() if initial else None
            return forms.TypedChoiceField(
                empty_value="", **_choices(BOOLEAN_CHOICES, initial, required, stored), **common
            )
    return forms.CharField(initial=initial, validators=[_within_size], **common)


class DeployForm(forms.Form):
    """What a new deployment is called and how it runs; its credentials are a CredentialForm."""

    # Environment variable names cannot contain "-", so prefixed fields never clash with the
    # CredentialForm's fields on the same page.
    prefix = "deployment"

    name = forms.CharField(
        max_length=63,
        validators=[SLUG_VALIDATOR],
        help_text="Lowercase letters, digits and hyphens. It names the deployment on your "
        "dashboard.",
    )
    process_model = forms.ChoiceField(
        label="Process model",
        choices=ProcessModel.choices,
        initial=ProcessModel.SHARED,
        widget=forms.RadioSelect,
        help_text="Shared uses the least memory and suits most servers. Choose isolated when "
        "the server keeps state per user (files, a browser, a login) that sessions must not "
        "share; each session then costs a process of its own.",
    )
    runtime = forms.ChoiceField(
        label="Runs on",
        required=False,  # left out: the first available runtime
        choices=Runtime.choices,
        initial=Runtime.LOCAL,
        widget=forms.RadioSelect,
        help_text="Where the server's process runs. Its endpoint is on Catwalk either way.",
    )

    def __init__(self, *args: Any, registry: str = "", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Only the runtimes that can run the package (an OCI image runs on Fly alone).
        kinds = set(runtimes_for(registry) if registry else available_runtimes())
        choices = [c for c in Runtime.choices if c[0] in kinds]
        self.fields["runtime"].choices = choices
        if choices and Runtime.LOCAL not in kinds:
            self.fields["runtime"].initial = choices[0][0]

    def clean_runtime(self) -> str:
        choices = self.fields["runtime"].choices
        if not choices:
            raise forms.ValidationError(
                "No runtime is available on this Catwalk: its operator has to configure one."
            )
        return self.cleaned_data["runtime"] or choices[0][0]


class GitHubTokenForm(forms.Form):
    token = forms.CharField(
        label="GitHub token",
        widget=forms.PasswordInput(render_value=False, attrs=SECRET_INPUT_ATTRS),
        validators=[validate_github_token],
        help_text="A fine-grained personal access token with read-only access to the "
        "contents of the repositories to analyse (or a classic token with the repo scope).",
    )


class CredentialUpdateForm(forms.Form):
    """One credential of a running deployment, added or replaced. The value is write-only: the
    form never renders it back, even with errors."""

    name = forms.CharField(
        max_length=255,
        validators=[ENV_NAME_VALIDATOR],
        help_text="The environment variable, e.g. API_KEY.",
        widget=forms.TextInput(attrs={"autocomplete": "off", "spellcheck": "false"}),
    )
    value = forms.CharField(
        strip=False,
        validators=[_within_size],
        widget=forms.PasswordInput(attrs=SECRET_INPUT_ATTRS),
        help_text="Stored encrypted; never shown again.",
    )

    def clean_name(self) -> str:
        name = self.cleaned_data["name"].strip()
        if name.upper().startswith(RESERVED_PREFIX):
            raise ValidationError(f"Names starting {RESERVED_PREFIX} are Catwalk's own.")
        return name


class TokenForm(forms.Form):
    label = forms.CharField(
        max_length=100,
        help_text="Where it is used, e.g. “laptop” or “Cursor”.",
        widget=forms.TextInput(attrs={"autocomplete": "off"}),
    )


class DeleteForm(forms.Form):
    """Deleting asks for the deployment's name, typed, so no stray click deletes it."""

    confirm = forms.CharField(label="Type the deployment's name to confirm", max_length=255)

    def __init__(self, name: str, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.expected = name

    def clean_confirm(self) -> str:
        typed = self.cleaned_data["confirm"].strip()
        if typed != self.expected:
            raise ValidationError(f"Type {self.expected} exactly to delete it.")
        return typed
