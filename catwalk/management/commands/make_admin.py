from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError


class Command(BaseCommand):
    help = "Give an existing account administrator rights."

    def add_arguments(self, parser):
        parser.add_argument("username")

    def handle(self, *args, username: str, **options):
        updated = (
            get_user_model()
            .objects.filter(username=username)
            .update(is_staff=True, is_superuser=True)
        )
        if not updated:
            raise CommandError(f"No account named {username!r}.")
        self.stdout.write(f"{username} is now an administrator.")
