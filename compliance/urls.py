from django.urls import path

from compliance.views import home

urlpatterns = [
    path("", home.index, name="compliance-home"),
]
