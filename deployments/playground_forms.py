"""The playground's form for one tool's arguments, generated from the tool's input schema.

Each property of the JSON Schema gets a field: a string a text input (a textarea unless the
schema keeps it short), a string enum a select, a number or an integer a number input, a
boolean a checkbox, and anything else — arrays, objects, unions, references — a textarea that
must hold JSON. Only these basic types are checked here; the server checks the rest.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

from django import forms
from django.core.exceptions import ValidationError
from mcp_types import Tool

# A property name used as it is in the field's name and id when it is this plain.
PLAIN_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,99}")
SHORT_STRING_MAX_LENGTH = 200
OMITTED = object()
JSON_KINDS = {"array": list, "object": dict}


def tool_key(name: str) -> str:
    """A short key for a tool, safe in HTML ids and form prefixes, the same on every request."""
    return "tool-" + hashlib.sha256(name.encode()).hexdigest()[:10]


class JSONArgumentField(forms.CharField):
    """Any JSON value, parsed; an array or an object when the schema says so. Empty: omitted."""

    def __init__(self, *, expected: str | None, **kwargs: Any) -> None:
        attrs = {"rows": 3, "spellcheck": "false", "class": "json"}
        super().__init__(widget=forms.Textarea(attrs=attrs), **kwargs)
        self.expected = expected

    def clean(self, value: Any) -> Any:
        text = super().clean(value)
        if not text:
            return OMITTED
        try:
            parsed = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValidationError(
                f"This is not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno}).",
                code="invalid_json",
            ) from None
        except (ValueError, RecursionError):  # a number too long, arrays nested too deep
            raise ValidationError("This JSON is too large to read.", code="invalid_json") from None
        kind = JSON_KINDS.get(self.expected or "")
        if kind is not None and not isinstance(parsed, kind):
            raise ValidationError(f"Enter a JSON {self.expected}.", code="wrong_type")
        return parsed


class ToolForm(forms.Form):
    """The arguments of one tool. `arguments()` gives them as the call sends them, leaving out
    the optional ones left blank."""

    def __init__(self, tool: Tool, data: Any = None) -> None:
        super().__init__(data, prefix=tool_key(tool.name))
        schema = tool.input_schema if isinstance(tool.input_schema, dict) else {}
        properties = schema.get("properties")
        required = schema.get("required")
        required = set(required) if isinstance(required, list) else set()
        self.argument_names: dict[str, str] = {}
        for index, (name, spec) in enumerate((properties or {}).items()):
            key = name if PLAIN_NAME.fullmatch(name) else f"argument-{index}"
            if key in self.fields:
                key = f"argument-{index}"
            self.fields[key] = _field(spec if isinstance(spec, dict) else {}, name in required)
            self.fields[key].label = name
            self.argument_names[key] = name

    def arguments(self) -> dict[str, Any]:
        arguments = {}
        for key, name in self.argument_names.items():
            value = self.cleaned_data[key]
            if value is OMITTED or value is None or value == "":
                continue
            arguments[name] = value
        return arguments


def _field(spec: dict[str, Any], required: bool) -> forms.Field:
    kind = _basic_type(spec)
    description = str(spec.get("description") or "")
    default = spec.get("default")
    common: dict[str, Any] = {"required": required, "help_text": description}
    enum = spec.get("enum")
    if kind in (None, "string") and _is_strings(enum):
        choices = [(value, value) for value in enum]
        if not required or default not in enum:
            choices.insert(0, ("", "(not set)" if not required else "(choose)"))
        return forms.ChoiceField(choices=choices, initial=default, **common)
    if kind == "string":
        max_length = _integer(spec.get("maxLength"))
        short = max_length is not None and max_length <= SHORT_STRING_MAX_LENGTH
        widget = (
            forms.TextInput if short or spec.get("format") else forms.Textarea(attrs={"rows": 2})
        )
        return forms.CharField(
            strip=False,
            min_length=_integer(spec.get("minLength")),
            max_length=max_length,
            widget=widget,
            initial=default if isinstance(default, str) else None,
            **common,
        )
    if kind in ("integer", "number"):
        field_class = forms.IntegerField if kind == "integer" else forms.FloatField
        return field_class(
            min_value=_number(spec.get("minimum")),
            max_value=_number(spec.get("maximum")),
            initial=_number(default),
            **common,
        )
    if kind == "boolean":
        # A checkbox always has an answer, so the argument is always sent.
        return forms.BooleanField(required=False, initial=default is True, help_text=description)
    what = f"JSON {kind}" if kind in JSON_KINDS else "JSON"
    return JSONArgumentField(
        expected=kind,
        initial=json.dumps(default, indent=2) if "default" in spec else None,
        required=required,
        help_text=f"{description} ({what})" if description else what,
    )


def _basic_type(spec: dict[str, Any]) -> str | None:
    """The one type a property takes (ignoring null), or None when it takes several or any."""
    declared = spec.get("type")
    if isinstance(declared, list):
        declared = [kind for kind in declared if kind != "null"]
        declared = declared[0] if len(declared) == 1 else None
    return declared if isinstance(declared, str) else None


def _is_strings(values: Any) -> bool:
    return isinstance(values, list) and bool(values) and all(isinstance(v, str) for v in values)


def _integer(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _number(value: Any) -> int | float | None:
    return value if isinstance(value, int | float) and not isinstance(value, bool) else None
