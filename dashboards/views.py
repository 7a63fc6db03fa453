"""The signed-in landing page. The live dashboards will grow from here."""

from django.shortcuts import render

from customers import queries
from customers.roles import MARKETER, SUPPORT, role_required


@role_required(SUPPORT, MARKETER)
def home(request):
    return render(request, "dashboards/home.html", {"overview": queries.overview()})
