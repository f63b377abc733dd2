"""Azure Functions entry point (v2 programming model): triggers only (the HTTP mapping is shared/api/routes.py).

The logic lives in ``shared/``: settings, Graph client, targets, state store, service.
"""
import azure.functions as func

from shared.api import console, routes
from shared.runtime import handlers, process

process.check_settings_at_startup()
# The function key at the host, unless callers bring Entra ID tokens (CALLER_AUTH=entra), which the
# app checks itself on every route (shared/api/callerauth.py).
app = func.FunctionApp(http_auth_level=process.http_auth_level())


@app.timer_trigger(arg_name="timer", schedule=process.binding_expression("SYNC_SCHEDULE"), run_on_startup=False, use_monitor=True)
def sync_timer(timer: func.TimerRequest) -> None:
    handlers.run_timer(timer.past_due)


# Every route accepts every method so that a wrong one gets a JSON 405, not the host's bare 404.
@app.route(route="sync/status", methods=routes.ALL_METHODS)
def sync_status(req: func.HttpRequest) -> func.HttpResponse:
    return routes.handle(req, "GET", routes.status)


@app.route(route="sync/history", methods=routes.ALL_METHODS)
def sync_history(req: func.HttpRequest) -> func.HttpResponse:
    return routes.handle(req, "GET", routes.history)


@app.route(route="sync/{target}", methods=routes.ALL_METHODS)
def sync_target(req: func.HttpRequest) -> func.HttpResponse:
    return routes.handle(req, "POST", routes.sync)


@app.route(route="sync/{target}/{itemId}", methods=routes.ALL_METHODS)
def sync_item(req: func.HttpRequest) -> func.HttpResponse:
    return routes.handle(req, "POST", routes.sync)


# A deferred sync fires when its message becomes visible (its cooldown has ended). On every queue,
# bytes that are not UTF-8 decode to an invalid message (logged and acknowledged), never a crash retried.
@app.queue_trigger(arg_name="message", queue_name=process.binding_expression("SYNC_QUEUE"), connection="AzureWebJobsStorage")
def sync_deferred(message: func.QueueMessage) -> None:
    handlers.run_deferred(message.get_body().decode(errors="replace"))


# Many tenants (MULTI_TENANT_CLIENT_ID): the registry, and the sync routes per registered tenant.
@app.route(route="tenants", methods=routes.ALL_METHODS)
def tenants(req: func.HttpRequest) -> func.HttpResponse:
    return routes.handle(req, "GET", routes.tenants_list)


@app.route(route="tenants/{tenantId}", methods=routes.ALL_METHODS)
def tenant(req: func.HttpRequest) -> func.HttpResponse:
    return routes.handle_methods(req, {"PUT": routes.tenant_put, "GET": routes.tenant_get, "DELETE": routes.tenant_delete})


@app.route(route="tenants/{tenantId}/sync/status", methods=routes.ALL_METHODS)
def tenant_sync_status(req: func.HttpRequest) -> func.HttpResponse:
    return routes.handle(req, "GET", routes.tenant_status)


@app.route(route="tenants/{tenantId}/sync/history", methods=routes.ALL_METHODS)
def tenant_sync_history(req: func.HttpRequest) -> func.HttpResponse:
    return routes.handle(req, "GET", routes.tenant_history)


@app.route(route="tenants/{tenantId}/sync/{target}", methods=routes.ALL_METHODS)
def tenant_sync_target(req: func.HttpRequest) -> func.HttpResponse:
    return routes.handle(req, "POST", routes.tenant_sync)


@app.route(route="tenants/{tenantId}/sync/{target}/{itemId}", methods=routes.ALL_METHODS)
def tenant_sync_item(req: func.HttpRequest) -> func.HttpResponse:
    return routes.handle(req, "POST", routes.tenant_sync)


# Many tenants: the timer's fan-out over the registry, a page or one tenant per message.
@app.queue_trigger(arg_name="message", queue_name=process.binding_expression("TENANT_QUEUE"), connection="AzureWebJobsStorage")
def tenant_sync(message: func.QueueMessage) -> None:
    handlers.run_tenant(message.get_body().decode(errors="replace"))


@app.timer_trigger(arg_name="timer", schedule=process.binding_expression("SYNC_WATCH_SCHEDULE"), run_on_startup=False, use_monitor=False)
def sync_watch(timer: func.TimerRequest) -> None:
    handlers.run_watch()


# Once a day: every tenant's Apple push certificate and ADE/VPP tokens, told at 30, 14, 7 and 1 days.
@app.timer_trigger(arg_name="timer", schedule=process.binding_expression("CREDENTIAL_CHECK_SCHEDULE"), run_on_startup=False,
                   use_monitor=True)
def credential_check(timer: func.TimerRequest) -> None:
    handlers.run_credential_check()


# The poll URL carries its own credential (a token), because Power Automate does not send the
# connector's key when it follows a Location header.
@app.route(route="operations/{operationId}", methods=routes.ALL_METHODS, auth_level=func.AuthLevel.ANONYMOUS)
def sync_operation(req: func.HttpRequest) -> func.HttpResponse:
    return routes.handle(req, "GET", routes.operation)


# Autopilot onboarding: import hardware hashes, one shared sync, follow each device to its profile.
@app.route(route="autopilot/devices", methods=routes.ALL_METHODS)
def autopilot_import(req: func.HttpRequest) -> func.HttpResponse:
    return routes.handle(req, "POST", routes.import_devices)


# Every row checked as an import checks it; nothing stored, no Graph call (the web console's preview).
@app.route(route="autopilot/devices/validate", methods=routes.ALL_METHODS)
def autopilot_import_validate(req: func.HttpRequest) -> func.HttpResponse:
    return routes.handle(req, "POST", routes.validate_devices)


@app.route(route="autopilot/imports", methods=routes.ALL_METHODS)
def autopilot_import_start(req: func.HttpRequest) -> func.HttpResponse:
    return routes.handle(req, "POST", routes.start_import)


@app.route(route="autopilot/imports/{importId}", methods=routes.ALL_METHODS, auth_level=func.AuthLevel.ANONYMOUS)
def autopilot_import_status(req: func.HttpRequest) -> func.HttpResponse:
    return routes.handle(req, "GET", routes.import_status)


# Each step of an import job is a queue message (no invocation waits for Graph).
@app.queue_trigger(arg_name="message", queue_name=process.binding_expression("IMPORT_QUEUE"), connection="AzureWebJobsStorage")
def autopilot_import_step(message: func.QueueMessage) -> None:
    handlers.run_import_step(message.get_body().decode(errors="replace"))


# Bulk device sync (SYNC_TARGETS names devices): a job per request, its steps on DEVICE_SYNC_QUEUE;
# its status URL carries its own token, like an import job's.
@app.route(route="devices/sync", methods=routes.ALL_METHODS)
def device_sync(req: func.HttpRequest) -> func.HttpResponse:
    return routes.handle(req, "POST", routes.device_sync)


@app.route(route="devices/syncJobs", methods=routes.ALL_METHODS)
def device_sync_start(req: func.HttpRequest) -> func.HttpResponse:
    return routes.handle(req, "POST", routes.start_device_sync)


@app.route(route="devices/sync/{jobId}", methods=routes.ALL_METHODS, auth_level=func.AuthLevel.ANONYMOUS)
def device_sync_status(req: func.HttpRequest) -> func.HttpResponse:
    return routes.handle(req, "GET", routes.device_sync_status)


@app.route(route="tenants/{tenantId}/devices/sync", methods=routes.ALL_METHODS)
def tenant_device_sync(req: func.HttpRequest) -> func.HttpResponse:
    return routes.handle(req, "POST", routes.tenant_device_sync)


@app.route(route="tenants/{tenantId}/devices/syncJobs", methods=routes.ALL_METHODS)
def tenant_device_sync_start(req: func.HttpRequest) -> func.HttpResponse:
    return routes.handle(req, "POST", routes.start_tenant_device_sync)


@app.route(route="tenants/{tenantId}/devices/sync/{jobId}", methods=routes.ALL_METHODS, auth_level=func.AuthLevel.ANONYMOUS)
def tenant_device_sync_status(req: func.HttpRequest) -> func.HttpResponse:
    return routes.handle(req, "GET", routes.tenant_device_sync_status)


@app.queue_trigger(arg_name="message", queue_name=process.binding_expression("DEVICE_SYNC_QUEUE"), connection="AzureWebJobsStorage")
def device_sync_step(message: func.QueueMessage) -> None:
    handlers.run_device_sync_step(message.get_body().decode(errors="replace"))


@app.route(route="health", methods=routes.ALL_METHODS, auth_level=func.AuthLevel.ANONYMOUS)
def health(req: func.HttpRequest) -> func.HttpResponse:
    return routes.handle(req, "GET", routes.health)


# Who the caller is and which app roles it holds (any authenticated caller; the web console's first call).
@app.route(route="me", methods=routes.ALL_METHODS)
def me(req: func.HttpRequest) -> func.HttpResponse:
    return routes.handle(req, "GET", routes.me)


# The web console (docs/console.md): its static files and how it signs in, anonymous and without
# data (every call it makes is to the routes above, with a key or a token).
@app.route(route="console", methods=routes.ALL_METHODS, auth_level=func.AuthLevel.ANONYMOUS)
def console_index(req: func.HttpRequest) -> func.HttpResponse:
    return console.serve(req)


@app.route(route="console/config.json", methods=routes.ALL_METHODS, auth_level=func.AuthLevel.ANONYMOUS)
def console_config(req: func.HttpRequest) -> func.HttpResponse:
    return console.config(req)


@app.route(route="console/{*path}", methods=routes.ALL_METHODS, auth_level=func.AuthLevel.ANONYMOUS)
def console_file(req: func.HttpRequest) -> func.HttpResponse:
    return console.serve(req)
