"""The credential form generated from an analysis (server.json `environmentVariables`): one
field per variable, typed by its format, secrets write-only, plus NAME=VALUE lines for the rest."""

from __future__ import annotations

from decimal import Decimal

import pytest
from django import forms

from deployments.forms import (
    EXTRA_FIELD,
    KEEP_STORED,
    CredentialForm,
    NumberField,
    environment_variables,
)

SECRET = "sk-live-canary-5f2a9c"


def variable(name: str, **fields) -> dict:
    return {"name": name, "description": f"About {name}", "isRequired": False, **fields}


def form_for(*variables: dict, data: dict | None = None, **kwargs) -> CredentialForm:
    return CredentialForm(variables=list(variables), data=data, **kwargs)


def valid_form(*variables: dict, data: dict, **kwargs) -> CredentialForm:
    form = form_for(*variables, data=data, **kwargs)
    assert form.is_valid(), form.errors
    return form


# --- From a server.json document ---------------------------------------------------------------


def test_variables_come_from_the_first_package():
    document = {
        "packages": [
            {"environmentVariables": [variable("API_KEY")]},
            {"environmentVariables": [variable("OTHER")]},
        ]
    }
    assert [v["name"] for v in environment_variables(document)] == ["API_KEY"]


@pytest.mark.parametrize(
    "document", [{}, {"packages": []}, {"packages": [{"registryType": "npm"}]}]
)
def test_no_packages_or_no_variables_give_no_fields_but_the_extra_lines(document):
    form = form_for(*environment_variables(document))
    assert list(form.fields) == [EXTRA_FIELD]
    assert form.variable_names == []


# --- One field per variable -------------------------------------------------------------------


def test_each_variable_gets_a_field_named_and_labelled_after_it_with_its_description():
    form = form_for(variable("REGION", description="Where the data lives"))
    field = form.fields["REGION"]
    assert field.label == "REGION"
    assert field.help_text == "Where the data lives"


def test_descriptions_are_escaped_because_they_come_from_a_repository():
    form = form_for(variable("REGION", description="<script>alert(1)</script>"))
    assert "<script>" not in form.fields["REGION"].help_text
    assert "&lt;script&gt;" in form.fields["REGION"].help_text


def test_a_secret_is_a_password_input_marked_for_a_show_hide_toggle():
    field = form_for(variable("API_KEY", isSecret=True)).fields["API_KEY"]
    assert isinstance(field, forms.CharField)
    assert isinstance(field.widget, forms.PasswordInput)
    assert field.widget.render_value is False
    assert field.widget.attrs["class"] == "secret"


def test_a_secret_never_shows_a_default():
    form = form_for(variable("API_KEY", isSecret=True, default="changeme"))
    assert "changeme" not in form.as_div()


def test_a_plain_variable_is_a_text_field_prefilled_with_its_default():
    field = form_for(variable("REGION", default="eu-west-1")).fields["REGION"]
    assert type(field) is forms.CharField
    assert field.initial == "eu-west-1"


def test_a_filepath_is_a_text_field():
    field = form_for(variable("ROOT", format="filepath", default="/data")).fields["ROOT"]
    assert type(field) is forms.CharField
    assert field.initial == "/data"


def test_choices_become_a_select_with_an_empty_choice_when_optional():
    field = form_for(variable("MODE", choices=["fast", "safe"], default="safe")).fields["MODE"]
    assert isinstance(field, forms.ChoiceField)
    assert field.choices == [("", "(not set)"), ("fast", "fast"), ("safe", "safe")]
    assert field.initial == "safe"


def test_required_choices_with_a_default_have_no_empty_choice():
    field = form_for(
        variable("MODE", choices=["fast", "safe"], default="safe", isRequired=True)
    ).fields["MODE"]
    assert field.choices == [("fast", "fast"), ("safe", "safe")]


def test_required_choices_without_a_default_make_the_user_choose():
    form = form_for(variable("MODE", choices=["fast", "safe"], isRequired=True), data={})
    assert form.fields["MODE"].choices[0] == ("", "(choose)")
    assert not form.is_valid()
    assert "MODE" in form.errors


def test_choices_refuse_a_value_not_offered():
    form = form_for(variable("MODE", choices=["fast", "safe"]), data={"MODE": "reckless"})
    assert not form.is_valid()
    assert "reckless is not one of the available choices" in form.errors["MODE"][0]


def test_a_boolean_is_a_true_false_select_with_its_default_preselected():
    field = form_for(variable("DEBUG", format="boolean", default="false")).fields["DEBUG"]
    assert isinstance(field, forms.TypedChoiceField)
    assert field.choices == [("", "(not set)"), ("true", "true"), ("false", "false")]
    assert field.initial == "false"


def test_a_boolean_default_given_as_json_true_is_preselected():
    field = form_for(variable("DEBUG", format="boolean", default=True)).fields["DEBUG"]
    assert field.initial == "true"


@pytest.mark.parametrize(("sent", "stored"), [("true", "true"), ("false", "false"), ("", None)])
def test_a_boolean_cleans_to_true_false_or_unset(sent, stored):
    form = valid_form(variable("DEBUG", format="boolean"), data={"DEBUG": sent})
    assert form.environment().get("DEBUG") == stored


def test_a_boolean_refuses_anything_else():
    form = form_for(variable("DEBUG", format="boolean"), data={"DEBUG": "yes"})
    assert not form.is_valid()


def test_a_number_is_a_number_field_prefilled_with_its_default():
    field = form_for(variable("PORT", format="number", default=8080)).fields["PORT"]
    assert isinstance(field, NumberField)
    assert field.initial == "8080"


@pytest.mark.parametrize(
    ("sent", "stored"),
    [
        ("42", "42"),
        (" 42 ", "42"),
        ("+7", "7"),
        ("-3", "-3"),
        ("1.50", "1.5"),
        ("0.25", "0.25"),
        ("2.000", "2"),
        ("1e3", "1000"),
        ("-0.0", "0"),
        ("0.1000000000000000000000000000001", "0.1000000000000000000000000000001"),
    ],
)
def test_a_number_accepts_integers_and_decimals_and_cleans_to_canonical_text(sent, stored):
    form = valid_form(variable("PORT", format="number"), data={"PORT": sent})
    assert form.environment() == {"PORT": stored}


@pytest.mark.parametrize("sent", ["eight", "NaN", "Infinity", "0x10", "1e999999999"])
def test_a_number_refuses_what_is_not_a_reasonable_number(sent):
    form = form_for(variable("PORT", format="number"), data={"PORT": sent})
    assert not form.is_valid()
    assert "PORT" in form.errors


def test_number_field_returns_text_not_a_decimal():
    assert NumberField(required=False).clean(Decimal("3.10")) == "3.1"


# --- Required, optional, already stored ---------------------------------------------------------


def test_a_required_variable_must_be_given():
    form = form_for(variable("API_KEY", isRequired=True, isSecret=True), data={})
    assert not form.is_valid()
    assert form.errors["API_KEY"] == ["This field is required."]


def test_an_optional_variable_left_blank_is_not_in_the_environment():
    form = valid_form(variable("REGION"), variable("API_KEY", isSecret=True), data={})
    assert form.environment() == {}


def test_a_required_secret_already_stored_may_be_left_blank_to_keep_it():
    form = valid_form(
        variable("API_KEY", isRequired=True, isSecret=True), data={}, existing={"API_KEY"}
    )
    assert form.fields["API_KEY"].required is False
    assert KEEP_STORED in form.fields["API_KEY"].help_text
    assert form.environment() == {}


def test_a_stored_variable_is_not_prefilled_so_its_default_cannot_overwrite_it():
    form = form_for(
        variable("REGION", default="us"),
        variable("MODE", choices=["a", "b"], default="a", isRequired=True),
        variable("DEBUG", format="boolean", default="true"),
        existing={"REGION", "MODE", "DEBUG"},
    )
    assert form.fields["REGION"].initial is None
    assert form.fields["MODE"].initial is None
    assert form.fields["MODE"].choices[0] == ("", "(keep the stored value)")
    assert form.fields["DEBUG"].initial is None


def test_a_stored_variable_can_still_be_replaced():
    form = valid_form(
        variable("API_KEY", isRequired=True, isSecret=True),
        data={"API_KEY": "new-value"},
        existing={"API_KEY"},
    )
    assert form.environment() == {"API_KEY": "new-value"}


# --- Values ---------------------------------------------------------------------------------


def test_plain_values_are_stripped_but_secrets_are_kept_exactly():
    form = valid_form(
        variable("REGION"),
        variable("API_KEY", isSecret=True),
        data={"REGION": "  eu  ", "API_KEY": "  padded secret "},
    )
    assert form.environment() == {"REGION": "eu", "API_KEY": "  padded secret "}


@pytest.mark.parametrize("secret", [True, False])
def test_values_over_32_kib_are_refused(secret):
    limit = 32 * 1024
    fits = valid_form(variable("BLOB", isSecret=secret), data={"BLOB": "x" * limit})
    assert fits.environment()["BLOB"] == "x" * limit
    form = form_for(variable("BLOB", isSecret=secret), data={"BLOB": "x" * (limit + 1)})
    assert not form.is_valid()
    assert "32 KiB" in form.errors["BLOB"][0]


def test_the_limit_counts_bytes_not_characters():
    form = form_for(variable("BLOB"), data={"BLOB": "é" * (16 * 1024 + 1)})
    assert not form.is_valid()


@pytest.mark.parametrize("secret", [True, False])
def test_values_with_a_nul_byte_are_refused(secret):
    form = form_for(variable("API_KEY", isSecret=secret), data={"API_KEY": "abc\x00def"})
    assert not form.is_valid()
    assert "API_KEY" in form.errors


def test_a_secret_is_not_rendered_back_after_a_failed_submit():
    form = form_for(
        variable("API_KEY", isRequired=True, isSecret=True),
        variable("PORT", isRequired=True, format="number"),
        data={"API_KEY": SECRET, "PORT": "not-a-number"},
    )
    assert not form.is_valid()
    html = form.as_div()
    assert SECRET not in html
    assert 'name="API_KEY"' in html


# --- Order ----------------------------------------------------------------------------------


def test_required_come_first_then_secrets_then_the_rest_each_as_listed():
    form = form_for(
        variable("PLAIN_A"),
        variable("SECRET_A", isSecret=True),
        variable("REQUIRED_A", isRequired=True),
        variable("PLAIN_B"),
        variable("REQUIRED_SECRET", isRequired=True, isSecret=True),
        variable("SECRET_B", isSecret=True),
    )
    assert list(form.fields) == [
        "REQUIRED_A",
        "REQUIRED_SECRET",
        "SECRET_A",
        "SECRET_B",
        "PLAIN_A",
        "PLAIN_B",
        EXTRA_FIELD,
    ]


def test_names_no_process_can_receive_and_catwalks_own_get_no_field():
    form = form_for(
        variable("API_KEY"),
        variable("API_KEY", description="listed twice"),
        variable("NOT A NAME"),
        variable("CATWALK_BRIDGE_SECRET"),
    )
    assert form.variable_names == ["API_KEY"]
    assert form.fields["API_KEY"].help_text == "About API_KEY"


# --- Extra NAME=VALUE lines -----------------------------------------------------------------


def test_extra_lines_add_variables_the_analysis_missed():
    form = valid_form(
        variable("REGION"),
        data={
            "REGION": "eu",
            EXTRA_FIELD: "# pasted from .env\r\nLOG_LEVEL=debug\r\n\r\n  TOKEN = a=b==  \r\n",
        },
    )
    assert form.environment() == {"REGION": "eu", "LOG_LEVEL": "debug", "TOKEN": "a=b=="}


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("just-a-secret-pasted-alone", "Line 2: write NAME=VALUE."),
        ("1ST=x", "Line 2: a name uses letters, digits and underscores"),
        ("=x", "Line 2: a name uses letters, digits and underscores"),
        ("CATWALK_DATA_DIR=/tmp", "Line 2: CATWALK_DATA_DIR: names starting CATWALK_ are reserved"),
        ("REGION=eu", "Line 2: REGION has its own field above."),
        ("LOG_LEVEL=info", "Line 2: LOG_LEVEL is given twice."),
        ("EMPTY=", "Line 2: EMPTY has no value."),
        ("BLOB=" + "x" * (32 * 1024 + 1), "Line 2: the value of BLOB is longer than 32 KiB."),
    ],
)
def test_extra_lines_are_checked_with_the_line_number(line, message):
    form = form_for(variable("REGION"), data={EXTRA_FIELD: f"LOG_LEVEL=debug\n{line}"})
    assert not form.is_valid()
    assert len(form.errors[EXTRA_FIELD]) == 1
    assert form.errors[EXTRA_FIELD][0].startswith(message)


def test_every_bad_extra_line_is_reported_at_once_without_repeating_values():
    form = form_for(data={EXTRA_FIELD: "ok=1\nsk-123=abc\nA=1\nA=2\nnope"})
    assert not form.is_valid()
    errors = form.errors[EXTRA_FIELD]
    assert [error.split(":")[0] for error in errors] == ["Line 2", "Line 4", "Line 5"]
    assert not any("sk-123" in error or "nope" in error for error in errors)


def test_an_extra_line_may_not_carry_a_nul_byte():
    form = form_for(data={EXTRA_FIELD: "A=x\x00y"})
    assert not form.is_valid()
