from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("deployments", "0007_restart_requested"),
    ]

    operations = [
        migrations.AddField(
            model_name="accesstoken",
            name="purpose",
            field=models.CharField(
                choices=[("client", "MCP clients"), ("playground", "Playground")],
                default="client",
                editable=False,
                max_length=10,
            ),
        ),
    ]
