from django.core.management.base import BaseCommand, CommandError

from deployments import crypto


class Command(BaseCommand):
    help = (
        "Re-encrypt every stored secret under the first key of CATWALK_ENCRYPTION_KEYS. "
        "Put the new key first, keep the old ones after it, run this, then drop the old keys."
    )

    def handle(self, *args, **options):
        try:
            count = crypto.rotate_all()
        except crypto.DecryptionError as exc:
            raise CommandError(str(exc)) from None
        columns = ", ".join(f"{m._meta.label}.{c}" for m, c in crypto.encrypted_columns())
        self.stdout.write(f"Re-encrypted {count} secret(s) under the primary key ({columns}).")
