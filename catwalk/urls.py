from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path, reverse_lazy

from analysis import views as analysis_views
from catwalk import views
from deployments import doctor_views, oauth_views, playground_views
from deployments import views as deployment_views

FORM = "accounts/form.html"


def _form(title: str, submit: str, **extra) -> dict:
    return {"template_name": FORM, "extra_context": {"title": title, "submit": submit, **extra}}


def _notice(title: str, text: str) -> dict:
    return {
        "template_name": "accounts/notice.html",
        "extra_context": {"title": title, "text": text},
    }


account_patterns = [
    path(
        "accounts/login/",
        auth_views.LoginView.as_view(
            redirect_authenticated_user=True, **_form("Sign in", "Sign in")
        ),
        name="login",
    ),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("accounts/signup/", views.signup, name="signup"),
    path(
        "accounts/password/change/",
        auth_views.PasswordChangeView.as_view(**_form("Change your password", "Change password")),
        name="password_change",
    ),
    path(
        "accounts/password/change/done/",
        auth_views.PasswordChangeDoneView.as_view(
            **_notice("Password changed", "Your password has been changed.")
        ),
        name="password_change_done",
    ),
    path(
        "accounts/password/reset/",
        auth_views.PasswordResetView.as_view(
            success_url=reverse_lazy("password_reset_done"),
            **_form("Reset your password", "Send reset link"),
        ),
        name="password_reset",
    ),
    path(
        "accounts/password/reset/sent/",
        auth_views.PasswordResetDoneView.as_view(
            **_notice(
                "Check your e-mail",
                "If an account uses that address, a link to reset its password is on its way.",
            )
        ),
        name="password_reset_done",
    ),
    path(
        "accounts/password/reset/<uidb64>/<token>/",
        auth_views.PasswordResetConfirmView.as_view(
            **_form("Choose a new password", "Set password")
        ),
        name="password_reset_confirm",
    ),
    path(
        "accounts/password/reset/complete/",
        auth_views.PasswordResetCompleteView.as_view(
            **_notice("Password set", "Your new password is set. You can sign in with it now.")
        ),
        name="password_reset_complete",
    ),
    path("accounts/github-token/", deployment_views.github_token, name="github-token"),
    path("setup/claim-admin/<str:token>/", views.claim_admin, name="claim-admin"),
]


def _deployment_path(route: str, view, name: str, **kwargs):
    return path(
        f"deployments/<uuid:deployment_id>/{route}", view, kwargs, name=f"deployment-{name}"
    )


deployment_patterns = [
    *(
        _deployment_path(f"{part}/", deployment_views.deployment_part, part, part=part)
        for part in deployment_views.LIVE_PARTS
    ),
    _deployment_path("start/", deployment_views.start_deployment_view, "start"),
    _deployment_path("stop/", deployment_views.stop_deployment_view, "stop"),
    _deployment_path("restart/", deployment_views.restart_deployment_view, "restart"),
    _deployment_path("delete/", deployment_views.delete_deployment_view, "delete"),
    _deployment_path("tokens/", deployment_views.create_token_view, "token-create"),
    _deployment_path(
        "tokens/<int:token_id>/revoke/", deployment_views.revoke_token_view, "token-revoke"
    ),
    _deployment_path("credentials/", deployment_views.set_credential_view, "credential-set"),
    _deployment_path(
        "credentials/<str:name>/remove/",
        deployment_views.remove_credential_view,
        "credential-remove",
    ),
    _deployment_path("playground/", playground_views.playground, "playground"),
    _deployment_path(
        "playground/<path:tool_name>/call/", playground_views.playground_call, "playground-call"
    ),
    _deployment_path("doctor/", doctor_views.check_connectors, "doctor"),
    _deployment_path(
        "approvals/<int:application_id>/revoke/",
        oauth_views.revoke_approval_view,
        "approval-revoke",
    ),
]

urlpatterns = [
    path("", deployment_views.dashboard, name="dashboard"),
    path(
        "deployments/<uuid:deployment_id>/",
        deployment_views.deployment_detail,
        name="deployment-detail",
    ),
    *deployment_patterns,
    path(
        "deployments/<uuid:deployment_id>/redeploy/",
        deployment_views.redeploy_deployment,
        name="deployment-redeploy",
    ),
    path(
        "deployments/<uuid:deployment_id>/rollback/",
        deployment_views.rollback_deployment,
        name="deployment-rollback",
    ),
    path("activity/", deployment_views.activity, name="activity"),
    path("analyses/new/", analysis_views.analysis_new, name="analysis-new"),
    path("analyses/<int:analysis_id>/", analysis_views.analysis_detail, name="analysis-detail"),
    path(
        "analyses/<int:analysis_id>/deploy/",
        deployment_views.deploy_analysis,
        name="analysis-deploy",
    ),
    path(
        "analyses/<int:analysis_id>/server.json",
        analysis_views.analysis_server_json,
        name="analysis-server-json",
    ),
    path("healthz", views.healthz, name="healthz"),
    path("favicon.ico", views.favicon),
    path("admin/", admin.site.urls),
    *account_patterns,
    # The OAuth authorization server: /.well-known/... metadata and /oauth/... endpoints.
    path("", include((oauth_views.oauth_patterns, "oauth2_provider"))),
]
