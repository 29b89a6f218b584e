"""The landing page."""

from django.shortcuts import render

from compliance import controls


def index(request):
    return render(request, "compliance/home.html", {
        "controls": controls.CONTROLS.values(),
        "states": [(s, controls.STATE_LABELS[s], controls.STATE_DESCRIPTIONS[s])
                   for s in controls.STATE_LABELS],
    })
