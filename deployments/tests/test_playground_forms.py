"""The playground's form for a tool is generated from its input schema and checks basic types."""

from __future__ import annotations

from mcp_types import Tool

from deployments.playground_forms import ToolForm, tool_key

SCHEMA = {
    "type": "object",
    "properties": {
        "query": {"type": "string", "description": "What to look for"},
        "code": {"type": "string", "maxLength": 8},
        "units": {"type": "string", "enum": ["metric", "imperial"]},
        "limit": {"type": "integer", "minimum": 1, "maximum": 50, "default": 10},
        "ratio": {"type": ["number", "null"]},
        "exact": {"type": "boolean", "default": True},
        "tags": {"type": "array", "items": {"type": "string"}},
        "filter": {"type": "object"},
        "anything": {"anyOf": [{"type": "string"}, {"type": "integer"}]},
        "with space": {"type": "string"},
    },
    "required": ["query", "units"],
}
TOOL = Tool(name="search", input_schema=SCHEMA)
PREFIX = tool_key("search")


def bound(**values: str) -> ToolForm:
    return ToolForm(TOOL, {f"{PREFIX}-{name}": value for name, value in values.items()})


def test_each_basic_type_gets_its_own_input():
    html = str(ToolForm(TOOL))

    assert f'<textarea name="{PREFIX}-query" cols="40" rows="2"' in html
    assert f'<input type="text" name="{PREFIX}-code" maxlength="8"' in html
    assert f'<select name="{PREFIX}-units"' in html and '<option value="imperial">' in html
    assert f'<input type="number" name="{PREFIX}-limit" value="10" min="1" max="50"' in html
    assert f'<input type="number" name="{PREFIX}-ratio" step="any"' in html
    assert f'<input type="checkbox" name="{PREFIX}-exact"' in html and "checked" in html
    for name in ("tags", "filter", "anything"):
        assert f'<textarea name="{PREFIX}-{name}" cols="40" rows="3" spellcheck="false"' in html
        assert f'class="json" aria-describedby="id_{PREFIX}-{name}_helptext"' in html


def test_labels_descriptions_and_required_markers_are_tied_to_their_inputs():
    form = ToolForm(TOOL)
    query = form["query"]

    assert query.label == "query" and query.field.required
    assert f'id="id_{PREFIX}-query"' in str(query)
    assert f'aria-describedby="id_{PREFIX}-query_helptext"' in str(query)
    assert query.help_text == "What to look for"
    assert not form["limit"].field.required
    assert form["tags"].help_text == "JSON array"


def test_valid_input_becomes_typed_arguments_and_blank_optional_ones_are_left_out():
    form = bound(
        query=" rain ", units="metric", limit="5", ratio="0.5", exact="on", tags='["a", "b"]'
    )

    assert form.is_valid(), form.errors
    assert form.arguments() == {
        "query": " rain ",
        "units": "metric",
        "limit": 5,
        "ratio": 0.5,
        "exact": True,
        "tags": ["a", "b"],
    }


def test_an_unchecked_checkbox_sends_false():
    form = bound(query="rain", units="metric")

    assert form.is_valid(), form.errors
    assert form.arguments()["exact"] is False


def test_required_arguments_must_be_given():
    form = bound()

    assert not form.is_valid()
    assert set(form.errors) == {"query", "units"}


def test_numbers_are_checked_against_their_type_and_bounds():
    form = bound(query="rain", units="metric", limit="2.5", ratio="soon")
    too_many = bound(query="rain", units="metric", limit="51")

    assert not form.is_valid() and not too_many.is_valid()
    assert form.errors["limit"] == ["Enter a whole number."]
    assert form.errors["ratio"] == ["Enter a number."]
    assert too_many.errors["limit"] == ["Ensure this value is less than or equal to 50."]


def test_a_value_outside_the_enum_is_refused():
    form = bound(query="rain", units="kelvin")

    assert not form.is_valid()
    assert "Select a valid choice." in form.errors["units"][0]


def test_invalid_json_says_where_and_json_of_the_wrong_kind_says_what_is_wanted():
    form = bound(query="rain", units="metric", tags='["a",', filter="[1]", anything="{")

    assert not form.is_valid()
    assert form.errors["tags"] == ["This is not valid JSON: Expecting value (line 1, column 6)."]
    assert form.errors["filter"] == ["Enter a JSON object."]
    assert form.errors["anything"][0].startswith("This is not valid JSON")


def test_json_nested_too_deep_is_refused_not_crashed_on():
    form = bound(query="rain", units="metric", anything="[" * 100_000 + "]" * 100_000)

    assert not form.is_valid()
    assert form.errors["anything"] == ["This JSON is too large to read."]


def test_a_property_name_unfit_for_html_keeps_its_argument_name():
    form = bound(query="rain", units="metric", **{"argument-9": "yes"})

    assert form.is_valid(), form.errors
    assert form["argument-9"].label == "with space"
    assert form.arguments()["with space"] == "yes"


def test_a_tool_without_properties_has_no_fields():
    form = ToolForm(Tool(name="ping", input_schema={"type": "object"}), {})

    assert list(form.fields) == []
    assert form.is_valid() and form.arguments() == {}
