from django.urls import path

from .views import actions, builder, customer_card, decisions, dry_run, journey, lists, publish, tasks, test_mode

app_name = "journeys"

urlpatterns = [
    path("", lists.journey_list, name="list"),
    # The journey page: status, versions, the live map and a node's panel on it.
    path("<int:journey_id>/", journey.journey_detail, name="detail"),
    path("<int:journey_id>/pause/", journey.journey_pause, name="pause"),
    path("<int:journey_id>/resume/", journey.journey_resume, name="resume"),
    path("<int:journey_id>/stop/", journey.journey_stop, name="stop"),
    path("<int:journey_id>/map/nodes/<slug:node_id>/", journey.map_node, name="map_node"),
    # Publishing (with the customers in flight), dry run and test mode.
    path("<int:journey_id>/publish/", publish.journey_publish, name="publish"),
    path("<int:journey_id>/dry-run/", dry_run.journey_dry_run, name="dry_run"),
    path("<int:journey_id>/test/", test_mode.journey_test, name="test"),
    path("<int:journey_id>/test/<int:enrollment_id>/", test_mode.journey_test_run, name="test_run"),
    # The Journeys card on the customer page.
    path("customers/<int:customer_id>/card/", customer_card.customer_journeys_card, name="customer_card"),
    # The builder: the canvas page, its autosaved draft, the side panel, "Validate".
    path("<int:journey_id>/edit/", builder.journey_builder, name="builder"),
    path("<int:journey_id>/draft/", builder.journey_draft, name="builder_draft"),
    path("<int:journey_id>/nodes/<slug:node_id>/", builder.journey_node, name="builder_node"),
    path("<int:journey_id>/settings/", builder.journey_settings, name="builder_settings"),
    path("<int:journey_id>/validate/", builder.journey_validate, name="builder_validate"),
    path("actions/", actions.action_list, name="action_list"),
    path("actions/new/", actions.action_new, name="action_new"),
    path("actions/<int:action_id>/", actions.action_edit, name="action_edit"),
    path("decisions/<int:decision_id>/", decisions.decision_why, name="decision"),
    path("tasks/", tasks.task_list, name="tasks"),
    path("tasks/<int:task_id>/", tasks.task_detail, name="task"),
    path("tasks/<int:task_id>/assign/", tasks.task_assign_to_me, name="task_assign"),
]
