"""Deploying an analysed server: the page asks for a name, a process model and the credentials
the analysis found; creating the deployment links it to the analysis, stores every value
encrypted (secrets marked secret) and shows the first access token once.

No server starts here: the runtime is told on commit, which is captured and checked instead.
"""

from __future__ import annotations

import re

import pytest

from analysis.models import AnalysisStatus
from analysis.serverjson import META_KEY
from catwalk.testing import make_analysis, make_deployment
from deployments.models import (
    AccessToken,
    BuildStatus,
    Credential,
    Deployment,
    ProcessModel,
    Runtime,
    SourceBuild,
    hash_token,
)
from deployments.runtimes.local import LocalRuntime, build_app_folder

pytestmark = pytest.mark.django_db

API_KEY = "sk-live-canary-5f2a9c"
WEBHOOK_TOKEN = "whk-canary-77d1"
EXTRA_SECRET = "xline-canary-0b3e"


def server_json(*, packages: list[dict] | None = None, executables=("weather-mcp",)) -> dict:
    """A realistic analysed server.json: a PyPI package whose script is not named after it,
    with a required secret, an optional secret, a choice and a plain setting with a default."""
    package = {
        "registryType": "pypi",
        "identifier": "acme-weather-mcp",
        "version": "1.4.0",
        "runtimeHint": "uvx",
        "transport": {"type": "stdio"},
        "environmentVariables": [
            {
                "name": "WEATHER_API_KEY",
                "description": "Key for the weather service",
                "isRequired": True,
                "isSecret": True,
            },
            {
                "name": "WEATHER_REGION",
                "description": "Default region",
                "isRequired": False,
                "isSecret": False,
                "default": "eu-west",
            },
            {
                "name": "WEATHER_UNITS",
                "description": "Units of measurement",
                "isRequired": False,
                "isSecret": False,
                "choices": ["metric", "imperial"],
                "default": "metric",
            },
            {
                "name": "WEATHER_WEBHOOK_TOKEN",
                "description": "Token for <b>alert</b> webhooks",
                "isRequired": False,
                "isSecret": True,
            },
        ],
    }
    return {
        "$schema": "https://static.modelcontextprotocol.io/schemas/2025-12-11/server.schema.json",
        "name": "io.github.acme/weather-mcp",
        "description": "Weather forecasts for any city",
        "version": "1.4.0",
        "packages": [package] if packages is None else packages,
        "_meta": {
            META_KEY: {
                "deployable": "package" if packages is None else "source",
                "package": {"executables": list(executables), "verified": True},
                "warnings": [],
            }
        },
    }


@pytest.fixture
def analysis(owner):
    return make_analysis(
        owner,
        owner="acme",
        name="weather-mcp",
        status=AnalysisStatus.SUCCEEDED,
        result=server_json(),
    )


def url(analysis) -> str:
    return f"/analyses/{analysis.pk}/deploy/"


def good_post(**overrides) -> dict[str, str]:
    data = {
        "deployment-name": "weather",
        "deployment-process_model": ProcessModel.SHARED,
        "WEATHER_API_KEY": API_KEY,
        "WEATHER_REGION": "us-east",
        "WEATHER_UNITS": "imperial",
        "WEATHER_WEBHOOK_TOKEN": "",
        "extra_environment": f"# added by hand\nEXTRA_SECRET={EXTRA_SECRET}\n",
    }
    data.update(overrides)
    return data


def rows() -> tuple[int, int, int]:
    return Deployment.objects.count(), Credential.objects.count(), AccessToken.objects.count()


def tag(content: bytes, element: str, name: str) -> str:
    """The opening tag of the form control called `name`."""
    found = re.search(rf'<{element}\b[^>]*\bname="{re.escape(name)}"[^>]*>', content.decode())
    assert found, f"no <{element} name={name!r}>"
    return found.group(0)


def label(content: bytes, name: str) -> str:
    found = re.search(rf'<label for="id_{re.escape(name)}">.*?</label>', content.decode(), re.S)
    assert found, f"no label for {name}"
    return found.group(0)


@pytest.fixture
def applied(monkeypatch) -> list[Deployment]:
    """What the local runtime is asked to apply (instead of nudging a supervisor)."""
    calls: list[Deployment] = []
    monkeypatch.setattr(LocalRuntime, "apply", lambda self, deployment: calls.append(deployment))
    return calls


# --- The page ----------------------------------------------------------------------------------


def test_the_page_names_the_package_and_suggests_a_name(owner_client, analysis):
    response = owner_client.get(url(analysis))

    assert response.status_code == 200
    content = response.content.decode()
    assert "Deploy <code>acme-weather-mcp@1.4.0</code>" in content
    assert 'value="acme-weather-mcp"' in tag(response.content, "input", "deployment-name")
    assert "stored encrypted" in content
    assert "never shown again" in content


def test_the_suggested_name_is_one_the_owner_does_not_use_yet(owner, owner_client, analysis):
    make_deployment(owner, "acme-weather-mcp")

    response = owner_client.get(url(analysis))

    assert 'value="acme-weather-mcp-2"' in tag(response.content, "input", "deployment-name")


def test_both_process_models_are_offered_with_what_they_mean(owner_client, analysis):
    content = owner_client.get(url(analysis)).content

    shared = tag(content, "input", "deployment-process_model")
    assert 'type="radio"' in shared and 'value="shared"' in shared and "checked" in shared
    assert b'value="isolated"' in content
    assert b"one server process for all sessions" in content
    assert b"one server process per session" in content


def test_each_variable_gets_a_field_of_its_kind(owner_client, analysis):
    content = owner_client.get(url(analysis)).content

    assert 'type="password"' in tag(content, "input", "WEATHER_API_KEY")
    assert 'type="password"' in tag(content, "input", "WEATHER_WEBHOOK_TOKEN")
    assert 'type="text"' in tag(content, "input", "WEATHER_REGION")
    assert 'value="eu-west"' in tag(content, "input", "WEATHER_REGION")
    tag(content, "select", "WEATHER_UNITS")
    assert b'<option value="imperial">imperial</option>' in content
    assert "textarea" in tag(content, "textarea", "extra_environment")


def test_required_variables_are_marked_and_secrets_labelled(owner_client, analysis):
    content = owner_client.get(url(analysis)).content

    assert "required" in label(content, "WEATHER_API_KEY")
    assert "secret" in label(content, "WEATHER_API_KEY")
    assert "required" not in label(content, "WEATHER_REGION")
    assert "secret" not in label(content, "WEATHER_REGION")
    assert b"Key for the weather service" in content
    assert b"Token for &lt;b&gt;alert&lt;/b&gt; webhooks" in content  # the repository's words


def test_anonymous_visitors_are_sent_to_sign_in(anon_client, analysis):
    for response in (anon_client.get(url(analysis)), anon_client.post(url(analysis), good_post())):
        assert response.status_code == 302
        assert response["Location"].startswith("/accounts/login/")
    assert rows() == (0, 0, 0)


def test_another_users_analysis_is_not_found(stranger_client, analysis):
    assert stranger_client.get(url(analysis)).status_code == 404
    assert stranger_client.post(url(analysis), good_post()).status_code == 404
    assert rows() == (0, 0, 0)


def test_an_analysis_that_does_not_exist_is_not_found(owner_client):
    assert owner_client.get("/analyses/999999/deploy/").status_code == 404


def test_an_analysis_without_a_package_says_there_is_nothing_to_deploy(owner, owner_client):
    analysis = make_analysis(
        owner, status=AnalysisStatus.SUCCEEDED, result=server_json(packages=[])
    )

    for response in (
        owner_client.get(url(analysis)),
        owner_client.post(url(analysis), good_post()),
    ):
        assert response.status_code == 400
        assert b"no published package, and no way to build it" in response.content
    assert rows() == (0, 0, 0)


def test_an_unfinished_analysis_has_nothing_to_deploy_yet(owner, owner_client):
    analysis = make_analysis(owner, status=AnalysisStatus.RUNNING)

    response = owner_client.get(url(analysis))

    assert response.status_code == 400
    assert b"nothing to deploy yet" in response.content


def test_a_package_catwalk_cannot_run_is_refused_before_the_form(owner, owner_client):
    image = {"registryType": "oci", "identifier": "ghcr.io/acme/weather", "version": "1.4.0"}
    analysis = make_analysis(
        owner, status=AnalysisStatus.SUCCEEDED, result=server_json(packages=[image])
    )

    response = owner_client.get(url(analysis))

    assert response.status_code == 400
    assert b"cannot run this package" in response.content
    assert b"OCI image packages run on the Fly runtime, which this Catwalk does not" in (
        response.content
    )


@pytest.mark.parametrize(
    ("identifier", "version"),
    [
        ("ghcr.io/acme/weather", "1.4.0"),
        ("ghcr.io/acme/weather:1.4.0", ""),
        ("ghcr.io/acme/weather:1.4.0", "1.4.0"),
    ],
)
def test_an_image_is_offered_on_fly_alone_and_deployed_there(
    owner, owner_client, settings, identifier, version
):
    settings.FLY_API_TOKEN, settings.FLY_ORG = "fly-token", "acme"
    settings.FLY_RUNNER_IMAGE = "registry.fly.io/catwalk-runner:test"
    image = {"registryType": "oci", "identifier": identifier, "version": version}
    analysis = make_analysis(
        owner, status=AnalysisStatus.SUCCEEDED, result=server_json(packages=[image])
    )

    html = owner_client.get(url(analysis)).content.decode()
    assert 'name="deployment-runtime" value="fly"' in html
    assert 'value="local"' not in html  # this host does not run images
    # Named after the repository, however the tag was given.
    assert 'value="weather"' in tag(html.encode(), "input", "deployment-name")

    refused = owner_client.post(url(analysis), good_post(**{"deployment-runtime": "local"}))
    assert refused.status_code == 400 and not Deployment.objects.exists()
    response = owner_client.post(url(analysis), good_post())
    assert response.status_code == 303
    deployment = Deployment.objects.get()
    assert (deployment.runtime, deployment.package_spec) == (
        "fly",
        "oci:ghcr.io/acme/weather:1.4.0",
    )


def test_a_host_path_named_by_the_repository_never_becomes_the_command(
    owner, owner_client, applied
):
    # A manifest's script names become the command to run; a path would run a host program.
    analysis = make_analysis(
        owner, status=AnalysisStatus.SUCCEEDED, result=server_json(executables=["/bin/sh"])
    )

    response = owner_client.post(url(analysis), good_post())

    assert response.status_code == 303
    assert Deployment.objects.get().entry_command == ""


# --- Deploying ---------------------------------------------------------------------------------


def test_deploying_creates_the_deployment_from_the_analysis(owner, owner_client, analysis, applied):
    response = owner_client.post(url(analysis), good_post())

    deployment = Deployment.objects.get()
    assert response.status_code == 303
    assert response["Location"] == f"/deployments/{deployment.id}/"
    assert deployment.owner == owner
    assert deployment.analysis == analysis
    assert deployment.name == "weather"
    assert (deployment.package_registry, deployment.package_name, deployment.package_version) == (
        "pypi",
        "acme-weather-mcp",
        "1.4.0",
    )
    assert deployment.entry_command == "weather-mcp"
    assert deployment.process_model == ProcessModel.SHARED
    assert deployment.runtime == Runtime.LOCAL
    assert deployment.access_tokens.get().label == "created with the deployment"


def test_the_runtime_is_told_once_the_deployment_is_committed(
    owner_client, analysis, applied, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        owner_client.post(url(analysis), good_post())

    assert applied == [Deployment.objects.get()]


def test_credentials_are_stored_encrypted_and_marked_secret_as_the_analysis_says(
    owner_client, analysis, applied
):
    owner_client.post(url(analysis), good_post())

    stored = {c.name: (c.is_secret, c.get_value()) for c in Credential.objects.all()}
    assert stored == {
        "WEATHER_API_KEY": (True, API_KEY),
        "WEATHER_REGION": (False, "us-east"),
        "WEATHER_UNITS": (False, "imperial"),
        "EXTRA_SECRET": (True, EXTRA_SECRET),  # lines the analysis missed count as secrets
    }
    assert not Credential.objects.filter(encrypted_value__contains=API_KEY).exists()


def test_the_chosen_process_model_is_kept(owner_client, analysis, applied):
    owner_client.post(url(analysis), good_post(**{"deployment-process_model": "isolated"}))

    assert Deployment.objects.get().process_model == ProcessModel.ISOLATED


def test_this_host_is_the_runtime_offered_while_no_other_is_configured(owner_client, analysis):
    html = owner_client.get(url(analysis)).content.decode()
    assert 'name="deployment-runtime" value="local"' in html
    assert 'value="fly"' not in html


def test_a_runtime_that_is_not_configured_is_refused_inline(owner_client, analysis, applied):
    response = owner_client.post(url(analysis), good_post(**{"deployment-runtime": "fly"}))
    assert response.status_code == 400
    assert b"Select a valid choice." in response.content
    assert not Deployment.objects.exists()


def test_fly_is_offered_and_chosen_once_it_is_configured(owner_client, analysis, settings):
    settings.FLY_API_TOKEN = "fly-test-token"
    settings.FLY_ORG = "acme"
    settings.FLY_RUNNER_IMAGE = "registry.fly.io/catwalk-runner:test"

    html = owner_client.get(url(analysis)).content.decode()
    assert 'name="deployment-runtime" value="fly"' in html

    response = owner_client.post(url(analysis), good_post(**{"deployment-runtime": "fly"}))
    assert response.status_code == 303
    assert Deployment.objects.get().runtime == "fly"


def test_with_no_runtime_available_the_form_says_so_and_saves_nothing(
    owner_client, analysis, settings
):
    settings.LOCAL_RUNTIME_ENABLED = False

    response = owner_client.post(url(analysis), good_post())
    assert response.status_code == 400
    assert b"No runtime is available on this Catwalk" in response.content
    assert not Deployment.objects.exists()


def test_the_first_token_is_shown_once_on_the_deployment_page(owner_client, analysis, applied):
    response = owner_client.post(url(analysis), good_post())
    assert "cwk_" not in response["Location"]

    first = owner_client.get(response["Location"])
    shown = re.search(rb"cwk_[A-Za-z0-9_-]{40,}", first.content)
    assert shown, "the token is not on the page"
    token = shown.group(0).decode()
    assert AccessToken.objects.get().token_hash == hash_token(token)
    assert b"Copy this token now; it will not be shown again." in first.content
    assert "no-store" in first["Cache-Control"]

    again = owner_client.get(response["Location"])
    assert again.status_code == 200
    assert token.encode() not in again.content
    assert b"it will not be shown again" not in again.content


# --- Mistakes ----------------------------------------------------------------------------------


def test_a_missing_required_secret_saves_nothing(owner_client, analysis, applied):
    response = owner_client.post(url(analysis), good_post(WEATHER_API_KEY=""))

    assert response.status_code == 400
    assert "This field is required." in response.content.decode()
    assert rows() == (0, 0, 0)
    assert applied == []


def test_an_invalid_name_or_process_model_saves_nothing(owner_client, analysis):
    response = owner_client.post(
        url(analysis),
        good_post(**{"deployment-name": "Not A Slug", "deployment-process_model": "shared-ish"}),
    )

    assert response.status_code == 400
    assert b"Use lowercase letters, digits and hyphens" in response.content
    assert b"Select a valid choice." in response.content
    assert rows() == (0, 0, 0)


def test_a_malformed_extra_line_saves_nothing(owner_client, analysis):
    response = owner_client.post(url(analysis), good_post(extra_environment="JUST_A_NAME"))

    assert response.status_code == 400
    assert b"Line 1: write NAME=VALUE." in response.content
    assert rows() == (0, 0, 0)


def test_a_name_already_used_is_refused_with_the_reason(owner, owner_client, analysis):
    make_deployment(owner, "weather")

    response = owner_client.post(url(analysis), good_post())

    assert response.status_code == 400
    assert b"already has a deployment named" in response.content
    assert Deployment.objects.count() == 1
    assert Credential.objects.count() == 0


def test_the_deployment_quota_is_explained(owner, owner_client, analysis, settings):
    settings.QUOTA_DEPLOYMENTS_PER_USER = 1
    make_deployment(owner, "other")

    response = owner_client.post(url(analysis), good_post())

    assert response.status_code == 400
    assert b"QUOTA_DEPLOYMENTS_PER_USER" in response.content
    assert Deployment.objects.count() == 1


def test_secret_values_are_not_sent_back_after_an_error(owner_client, analysis):
    response = owner_client.post(
        url(analysis),
        good_post(**{"deployment-name": "Not A Slug", "WEATHER_WEBHOOK_TOKEN": WEBHOOK_TOKEN}),
    )

    assert response.status_code == 400
    for secret in (API_KEY, WEBHOOK_TOKEN, EXTRA_SECRET):
        assert secret.encode() not in response.content
    assert 'value="us-east"' in tag(response.content, "input", "WEATHER_REGION")  # not a secret
    assert b"enter them again" in response.content


# --- Ways in -----------------------------------------------------------------------------------


def test_the_analysis_page_offers_to_deploy_its_package(owner_client, analysis):
    response = owner_client.get(f"/analyses/{analysis.pk}/")

    assert f'href="{url(analysis)}"'.encode() in response.content
    assert b"Deploy this server" in response.content


def test_an_analysis_without_a_package_offers_no_deploy(owner, owner_client):
    analysis = make_analysis(
        owner, status=AnalysisStatus.SUCCEEDED, result=server_json(packages=[])
    )

    assert b"Deploy this server" not in owner_client.get(f"/analyses/{analysis.pk}/").content


def test_an_empty_dashboard_leads_to_analysing_a_repository(owner_client):
    content = owner_client.get("/").content.decode()

    assert content.count('href="/analyses/new/"') == 2  # the navigation and the empty state
    assert "Analyse a repository" in content


def test_a_dashboard_with_deployments_still_leads_to_analysing_one(owner, owner_client):
    make_deployment(owner, "weather")

    content = owner_client.get("/").content.decode()

    assert content.count('href="/analyses/new/"') == 2  # the navigation and the header


# --- From source ---------------------------------------------------------------------------------

RECIPE = {
    "runnable": True,
    "reason": "",
    "ecosystem": "node",
    "packageManager": "npm",
    "root": "",
    "folder": "",
    "lockfile": "package-lock.json",
    "buildScript": True,
    "entry": {"file": "dist/index.js"},
    "pythonInstall": "",
    "transport": "stdio",
}


@pytest.fixture
def source_analysis(owner):
    document = server_json(packages=[])
    found = document["_meta"][META_KEY]
    found["source"] = RECIPE
    found["unpublished"] = {
        "environmentVariables": [
            {"name": "WEATHER_API_KEY", "description": "Key", "isRequired": True, "isSecret": True}
        ],
        "packageArguments": [],
    }
    return make_analysis(
        owner,
        owner="acme",
        name="weather-mcp",
        status=AnalysisStatus.SUCCEEDED,
        commit_sha="c" * 40,
        result=document,
    )


def test_an_unpublished_repository_is_deployed_from_source_after_its_build(
    owner_client, source_analysis, applied, django_capture_on_commit_callbacks
):
    page = owner_client.get(url(source_analysis))
    with django_capture_on_commit_callbacks() as queued:
        response = owner_client.post(
            url(source_analysis),
            {
                "deployment-name": "weather",
                "deployment-process_model": ProcessModel.SHARED,
                "WEATHER_API_KEY": API_KEY,
            },
        )

    assert b"from source" in page.content and b'type="password"' in page.content
    assert response.status_code == 303
    deployment = Deployment.objects.get()
    build = deployment.source_build
    assert (deployment.package_registry, deployment.package_name, deployment.package_version) == (
        "source",
        "acme/weather-mcp",
        "c" * 12,
    )
    assert (build.repository, build.commit_sha, build.status) == (
        "acme/weather-mcp",
        "c" * 40,
        BuildStatus.BUILDING,
    )
    assert build.recipe == RECIPE
    assert deployment.credentials.get().get_value() == API_KEY
    assert len(queued) == 2  # the build task, and telling the runtime


def test_a_second_deployment_of_the_same_commit_reuses_its_build(
    owner,
    owner_client,
    source_analysis,
    applied,
    django_capture_on_commit_callbacks,
    settings,
    tmp_path,
):
    from deployments.builds import claim

    settings.DATA_DIR = tmp_path

    build, _ = claim("acme/weather-mcp", "", "c" * 40, RECIPE, user=owner)
    SourceBuild.objects.filter(pk=build.pk).update(status=BuildStatus.SUCCEEDED)
    app = build_app_folder(build.pk)
    app.mkdir(parents=True)

    with django_capture_on_commit_callbacks() as queued:
        response = owner_client.post(
            url(source_analysis),
            {
                "deployment-name": "weather",
                "deployment-process_model": ProcessModel.SHARED,
                "WEATHER_API_KEY": API_KEY,
            },
        )

    assert response.status_code == 303
    assert Deployment.objects.get().source_build == build
    assert SourceBuild.objects.count() == 1
    assert len(queued) == 1  # only telling the runtime: nothing to build


def test_on_fly_the_commit_is_pinned_and_built_by_the_deployments_machine_not_a_worker(
    owner_client, source_analysis, django_capture_on_commit_callbacks, settings
):
    settings.FLY_API_TOKEN, settings.FLY_ORG = "fly-token", "acme"
    settings.FLY_RUNNER_IMAGE = "registry.fly.io/catwalk-runner:test"

    with django_capture_on_commit_callbacks() as queued:
        response = owner_client.post(
            url(source_analysis),
            {
                "deployment-name": "weather",
                "deployment-process_model": ProcessModel.SHARED,
                "deployment-runtime": "fly",
                "WEATHER_API_KEY": API_KEY,
            },
        )

    assert response.status_code == 303
    deployment = Deployment.objects.get()
    assert deployment.runtime == "fly"
    build = deployment.source_build
    assert (build.commit_sha, build.status) == ("c" * 40, BuildStatus.ELSEWHERE)
    assert len(queued) == 1  # only the Fly reconciler: no worker builds it
