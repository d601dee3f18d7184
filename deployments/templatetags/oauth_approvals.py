"""The approvals section of a deployment's page (templates/deployments/_approvals.html) finds
its own rows, so the page's view need not know about OAuth."""

from __future__ import annotations

from django import template

from deployments.models import Deployment
from deployments.oauth import Approval, approvals_for

register = template.Library()


@register.simple_tag
def deployment_approvals(deployment: Deployment) -> list[Approval]:
    return approvals_for(deployment)
