from django.conf import settings
from django.core.management.base import BaseCommand

from catwalk import accounts


class Command(BaseCommand):
    help = "Print a one-time link that makes the signed-in account Catwalk's first administrator."

    def handle(self, *args, **options):
        if accounts.admin_exists():
            self.stdout.write("An administrator exists already; no link is needed.")
            return
        self.stdout.write(
            "Sign up, then open this link to become the administrator (valid for a day, "
            f"first account only):\n  {settings.PUBLIC_URL}{accounts.admin_claim_path()}"
        )
