from django.apps import AppConfig


class CatwalkConfig(AppConfig):
    name = "catwalk"
    verbose_name = "Catwalk"
