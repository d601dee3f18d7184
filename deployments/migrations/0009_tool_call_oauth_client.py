import django.db.models.deletion
from django.db import migrations, models
from oauth2_provider.settings import oauth2_settings


class Migration(migrations.Migration):
    dependencies = [
        ("deployments", "0008_access_token_purpose"),
        # The toolkit's own setting, as its migrations use it: OAUTH2_PROVIDER_APPLICATION_MODEL
        # need not be set in Catwalk's settings.
        migrations.swappable_dependency(oauth2_settings.APPLICATION_MODEL),
    ]

    operations = [
        migrations.AddField(
            model_name="toolcall",
            name="oauth_client",
            field=models.ForeignKey(
                blank=True,
                null=True,
                on_delete=django.db.models.deletion.SET_NULL,
                related_name="tool_calls",
                to=oauth2_settings.APPLICATION_MODEL,
            ),
        ),
    ]
