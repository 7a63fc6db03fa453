"""The live dashboards: the overview (home page) and a campaign's dashboard.

Both pages render the same partials the websocket pushes, so what loads and what
updates cannot drift apart.
"""

from django.shortcuts import render

from campaigns.queries import campaign_for
from core.charts import as_script_json
from customers.roles import MARKETER, SUPPORT, role_required

from . import live


@role_required(SUPPORT, MARKETER)
def home(request):
    context = live.overview_context()
    context["ingest_chart_json"] = as_script_json(context["ingest_chart"])
    return render(request, "dashboards/home.html", context)


@role_required(MARKETER)
def campaign(request, campaign_id: int):
    campaign = campaign_for(request.user, campaign_id)
    context = live.campaign_context(campaign)
    context["series_chart_json"] = as_script_json(context["series_chart"])
    return render(request, "dashboards/campaign.html", context)
