// intune-sync: everything the app needs, keyless. `azd up` provisions this, then deploys the code.
targetScope = 'subscription'

@minLength(1)
@maxLength(64)
@description('azd environment name; used to name the resource group and resources.')
param environmentName string

@minLength(1)
@description('Azure region for every resource (one where Flex Consumption is available).')
param location string

@description('Grant the managed identity the Graph application roles of the enabled targets and of the daily Apple credentials check (shared/graph-roles.json; DeviceManagementServiceConfig.ReadWrite.All for the default autopilot, DeviceManagementServiceConfig.Read.All always) during deployment. Needs AppRoleAssignment.ReadWrite.All for the deployer; set false and run scripts/grant-graph-permission.sh later otherwise.')
param grantGraphPermission bool = true

// App settings the code reads (shared/common/settings.py). Same names and defaults as the code:
// tests/test_infra.py fails if the two drift apart.
@description('Microsoft Graph host; change for national clouds.')
param graphBaseUrl string = 'https://graph.microsoft.com'

@description('Comma list of targets: autopilot, exchange, appleAde, vpp, managedGooglePlay, driverInventory; add devices to switch bulk device sync on (POST /api/devices/sync; never run by the timer), which also grants its Graph roles.')
param syncTargets string = 'autopilot'

@description('NCRONTAB schedule of the timer (six fields).')
param syncSchedule string = '0 0 * * * *'

@allowed(['deltaSync', 'fullSync'])
param exchangeSyncType string = 'deltaSync'

@minValue(600)
@maxValue(604800)
param autopilotCooldownSeconds int = 600

@minValue(60)
@maxValue(604800)
param exchangeCooldownSeconds int = 600

@minValue(900)
@maxValue(604800)
param appleAdeCooldownSeconds int = 900

@minValue(60)
@maxValue(604800)
param vppCooldownSeconds int = 600

@minValue(60)
@maxValue(604800)
param managedGooglePlayCooldownSeconds int = 600

@minValue(60)
@maxValue(604800)
param driverInventoryCooldownSeconds int = 600

@description('Hours after the last good sync at which GET /api/sync/status rates a target warning / unhealthy.')
@minValue(1)
@maxValue(8760)
param healthWarningHours int = 24
@minValue(1)
@maxValue(8760)
param healthUnhealthyHours int = 72

@description('Per-target overrides of those hours, e.g. vpp=12:48,appleAde=24:96.')
param healthThresholds string = ''

@description('Days before an Apple or VPP token expires at which it is rated warning.')
@minValue(1)
@maxValue(365)
param tokenExpiryWarningDays int = 30

@description('Seconds within which GET /api/sync/status answers; Graph reads still running then are reported unavailable.')
@minValue(1)
@maxValue(200)
param statusDeadlineSeconds int = 20

@description('Days of sync history kept in the state table; older rows are deleted by the watcher.')
@minValue(1)
@maxValue(3650)
param historyRetentionDays int = 90

@description('Table for cooldowns, leases and history.')
param stateTableName string = 'intunesync'

@description('Queue whose delayed messages fire deferred syncs.')
param deferredQueueName string = 'intunesync-deferred'

@description('Queue whose messages drive Autopilot import jobs (POST /api/autopilot/devices).')
param importQueueName string = 'intunesync-imports'

@description('Seconds between an import job\'s looks at Graph (import status, then profile assignment).')
@minValue(1)
@maxValue(3600)
param importPollSeconds int = 60

@description('Seconds the first import job to finish waits before the Autopilot sync, so that jobs finishing together share it.')
@minValue(0)
@maxValue(600)
param importSyncDelaySeconds int = 120

@description('Seconds after which a device of an import job that has no profile yet ends timedOut.')
@minValue(600)
@maxValue(604800)
param importWaitTimeoutSeconds int = 14400

@description('Seconds a step of an import job holds its job without renewing the claim: a step that dies is taken over after this.')
@minValue(2)
@maxValue(300)
param importStepClaimSeconds int = 60

@description('Seconds between a working import step\'s renewals of its claim (at most half of importStepClaimSeconds).')
@minValue(1)
@maxValue(150)
param importStepHeartbeatSeconds int = 20

@description('Intune writes per app per tenant per window for managed devices (syncDevice...), shared by every instance (Table Storage); Intune allows 200 per 20 s. The app grants 3 % less.')
@minValue(1)
@maxValue(400)
param deviceWriteLimit int = 200

@description('Intune writes per app per tenant per window for every other area the app writes (sync actions, Autopilot imports, group tags, deletes); Intune allows 100 per 20 s. 10 of them are kept for sync actions.')
@minValue(1)
@maxValue(200)
param intuneWriteLimit int = 100

@description('Seconds over which Intune counts those writes (20). Shorten only against an emulator.')
@minValue(1)
@maxValue(300)
param writeLimitWindowSeconds int = 20

@description('Queue whose messages drive bulk device sync jobs (POST /api/devices/sync).')
param deviceSyncQueueName string = 'intunesync-devices'

@description('Most devices one device sync request may name (its deviceIds, serialNumbers, filter or group).')
@minValue(1)
@maxValue(200000)
param deviceSyncMaxDevices int = 50000

@description('Devices handled by one step (queue message) of a device sync job.')
@minValue(20)
@maxValue(1000)
param deviceSyncStepDevices int = 200

@description('Seconds a device sync step holds its job; a step that dies is taken over once they have passed.')
@minValue(5)
@maxValue(300)
param deviceSyncStepClaimSeconds int = 60

@description('Default of skipSyncedWithinMinutes: a device whose last sync is this recent is skipped (skippedRecent).')
@minValue(0)
@maxValue(10080)
param deviceSyncSkipMinutes int = 60

@description('Many tenants from one deployment: create a multi-tenant app registration (sign-in audience AzureADMultipleOrgs, the Graph application permissions of the enabled targets) whose only credential is a federated identity credential trusting the app\'s user-assigned identity, and set MULTI_TENANT_CLIENT_ID to its client id. Needs the right to create applications (e.g. Application Developer); public cloud only. false (default): one tenant, the app\'s own, as before.')
param multiTenant bool = false

@description('Bring your own multi-tenant app registration (used only with multiTenant=false): its client id becomes MULTI_TENANT_CLIENT_ID. It needs, added by someone allowed to, a federated identity credential trusting the app\'s identity (issuer: this tenant\'s Entra authority + /v2.0; subject: output AZURE_IDENTITY_PRINCIPAL_ID; audience: api://AzureADTokenExchange) and the Graph application permissions of the enabled targets. Empty (default): one tenant.')
param multiTenantClientId string = ''

@description('Display name of the multi-tenant app registration (multiTenant=true): what customer administrators see when they consent.')
@minLength(1)
@maxLength(256)
param multiTenantAppDisplayName string = 'intune-sync'

@description('How callers sign in: key (a function key per route, as before) or entra (an Entra ID access token for the API\'s app registration, created here, with an app role per route; docs/security.md). entra needs the right to create applications; public cloud only.')
@allowed(['key', 'entra'])
param callerAuth string = 'key'

@description('Comma list of more Entra tenant ids whose users and apps may call (callerAuth=entra), e.g. an MSP\'s own tenant when the app runs in a customer\'s; non-empty makes the API\'s registration multi-tenant. The home tenant always may.')
param callerTenants string = ''

@description('Comma list of more web console URLs for the API\'s registration (callerAuth=entra), e.g. https://sync.contoso.com/api/console behind a custom domain; the default host\'s is always there (docs/console.md).')
param consoleRedirectUris string = ''

@description('Seconds between refetches of the tenant\'s signing keys when a token names an unknown key (callerAuth=entra).')
@minValue(1)
@maxValue(3600)
param callerKeysRefreshSeconds int = 60

@description('Display name of the API\'s app registration (callerAuth=entra): what administrators see under Enterprise applications when they assign roles.')
@minLength(1)
@maxLength(256)
param callerApiDisplayName string = 'intune-sync API'

@description('Queue of per-tenant syncs (many tenants).')
param tenantQueueName string = 'intunesync-tenants'

@minValue(60)
@maxValue(3600)
param leaseSeconds int = 180

@description('Seconds kept over every window Graph imposes (Autopilot 10 min, Apple 15 min), for instances whose clocks differ.')
@minValue(1)
@maxValue(300)
param clockSkewMarginSeconds int = 30

@minValue(1)
@maxValue(120)
param graphTimeoutSeconds int = 30

@description('How long "sync and wait" follows a sync before answering timedOut.')
@minValue(60)
@maxValue(86400)
param waitTimeoutSeconds int = 3600

@description('NCRONTAB schedule of the watcher that reports finished syncs to NOTIFY_URL.')
param watchSchedule string = '0 */2 * * * *'

@description('NCRONTAB schedule of the daily check of the Apple credentials (APNs certificate, ADE and VPP tokens) in every tenant, told to NOTIFY_URL at 30, 14, 7 and 1 days and at expiry.')
param credentialCheckSchedule string = '0 0 6 * * *'

@secure()
@description('Comma list of URLs to POST sync notifications to (e.g. a Power Automate "When an HTTP request is received" URL); empty for none.')
param notifyUrl string = ''

@allowed(['json', 'adaptiveCard'])
param notifyFormat string = 'json'

@description('Comma list of host names a trusted front end (Front Door, APIM) may send in X-Forwarded-Host; the "sync and wait" Location uses such a host. Empty: always WEBSITE_HOSTNAME.')
param trustedForwardedHosts string = ''

@description('Storage redundancy. Standard_LRS (default) deploys in every Flex Consumption region. Choose Standard_ZRS in a region with availability zones to keep the state, the queue and the deployment package through a zone outage; it fails to deploy in a region without zones (as does Standard_GZRS). Standard_GRS/GZRS add a paired-region copy the single-region app never fails over to.')
@allowed(['Standard_LRS', 'Standard_ZRS', 'Standard_GRS', 'Standard_GZRS'])
param storageSku string = 'Standard_LRS'

@description('Maximum Flex Consumption instances; the app needs few.')
@minValue(1)
@maxValue(1000)
param maximumInstanceCount int = 40

@description('Deploy the Azure Monitor workbook (syncs, failures, unit health, deferred syncs, Autopilot imports, tenants, the next expiring Apple credential per tenant) on the Application Insights component. Keyless: its queries run as whoever opens it.')
param deployWorkbook bool = true

@description('E-mail address alerted (through an action group) when a sync fails, a unit is rated unhealthy or an Apple credential (APNs certificate, ADE or VPP token) of a tenant is expiring. Empty (default): no alert rules, action group or alert identity at all.')
param alertEmail string = ''

var abbrs = loadJsonContent('abbreviations.json')
var resourceToken = toLower(uniqueString(subscription().id, environmentName, location))
var tags = { 'azd-env-name': environmentName }
var functionAppName = '${abbrs.webSitesFunctions}${resourceToken}'
// The function app's host name, known before the app exists: the API's registration (callerAuth=entra)
// is created before the app, which takes its client id, so it cannot read api.outputs.url. Flex
// Consumption's default host is <name>.azurewebsites.net (api.bicep asks for no unique default host
// name); the Graph extension, and so the registration, is public cloud only.
var functionAppHostName = '${functionAppName}.azurewebsites.net'
// Callers sign in with Entra ID (callerAuth=entra): the API's app registration exists and the app checks tokens.
var entraCallers = callerAuth == 'entra'
var deploymentContainerName = 'app-package-${take(functionAppName, 32)}-${take(resourceToken, 7)}'

// The Graph application roles the enabled targets need, from the same table the code uses. Its
// `devices` entry (bulk device sync) is granted only when SYNC_TARGETS names devices; its
// `credentials` entry (the daily check of the Apple credentials, a read-only role) always, whatever
// SYNC_TARGETS says: shared/common/permissions.py ALWAYS, roles_for().
var targetRoles = loadJsonContent('../shared/graph-roles.json')
var rolesPerTarget = [for target in split(syncTargets, ','): targetRoles[trim(target)]]
var alwaysOn = ['credentials']
var rolesAlwaysOn = [for capability in alwaysOn: targetRoles[capability]]
var graphAppRoles = union(flatten(rolesPerTarget), flatten(rolesAlwaysOn)) // union() drops duplicates, keeps the order

var syncSettings = {
  GRAPH_BASE_URL: graphBaseUrl
  SYNC_TARGETS: syncTargets
  SYNC_SCHEDULE: syncSchedule
  EXCHANGE_SYNC_TYPE: exchangeSyncType
  AUTOPILOT_COOLDOWN_SECONDS: string(autopilotCooldownSeconds)
  EXCHANGE_COOLDOWN_SECONDS: string(exchangeCooldownSeconds)
  APPLE_ADE_COOLDOWN_SECONDS: string(appleAdeCooldownSeconds)
  VPP_COOLDOWN_SECONDS: string(vppCooldownSeconds)
  MANAGED_GOOGLE_PLAY_COOLDOWN_SECONDS: string(managedGooglePlayCooldownSeconds)
  DRIVER_INVENTORY_COOLDOWN_SECONDS: string(driverInventoryCooldownSeconds)
  HEALTH_WARNING_HOURS: string(healthWarningHours)
  HEALTH_UNHEALTHY_HOURS: string(healthUnhealthyHours)
  HEALTH_THRESHOLDS: healthThresholds
  TOKEN_EXPIRY_WARNING_DAYS: string(tokenExpiryWarningDays)
  TRUSTED_FORWARDED_HOSTS: trustedForwardedHosts
  STATUS_DEADLINE_SECONDS: string(statusDeadlineSeconds)
  HISTORY_RETENTION_DAYS: string(historyRetentionDays)
  SYNC_STATE_TABLE: stateTableName
  SYNC_QUEUE: deferredQueueName
  IMPORT_QUEUE: importQueueName
  IMPORT_POLL_SECONDS: string(importPollSeconds)
  IMPORT_SYNC_DELAY_SECONDS: string(importSyncDelaySeconds)
  IMPORT_WAIT_TIMEOUT_SECONDS: string(importWaitTimeoutSeconds)
  IMPORT_STEP_CLAIM_SECONDS: string(importStepClaimSeconds)
  IMPORT_STEP_HEARTBEAT_SECONDS: string(importStepHeartbeatSeconds)
  DEVICE_WRITE_LIMIT: string(deviceWriteLimit)
  INTUNE_WRITE_LIMIT: string(intuneWriteLimit)
  WRITE_LIMIT_WINDOW_SECONDS: string(writeLimitWindowSeconds)
  DEVICE_SYNC_QUEUE: deviceSyncQueueName
  DEVICE_SYNC_MAX_DEVICES: string(deviceSyncMaxDevices)
  DEVICE_SYNC_STEP_DEVICES: string(deviceSyncStepDevices)
  DEVICE_SYNC_STEP_CLAIM_SECONDS: string(deviceSyncStepClaimSeconds)
  DEVICE_SYNC_SKIP_MINUTES: string(deviceSyncSkipMinutes)
  MULTI_TENANT_CLIENT_ID: multiTenant ? multiTenantApp!.outputs.appId : multiTenantClientId
  CALLER_AUTH: callerAuth
  API_CLIENT_ID: entraCallers ? callerApi!.outputs.appId : ''
  CALLER_TENANTS: callerTenants
  CALLER_KEYS_REFRESH_SECONDS: string(callerKeysRefreshSeconds)
  TENANT_QUEUE: tenantQueueName
  SYNC_LEASE_SECONDS: string(leaseSeconds)
  CLOCK_SKEW_MARGIN_SECONDS: string(clockSkewMarginSeconds)
  GRAPH_TIMEOUT_SECONDS: string(graphTimeoutSeconds)
  SYNC_WAIT_TIMEOUT_SECONDS: string(waitTimeoutSeconds)
  SYNC_WATCH_SCHEDULE: watchSchedule
  CREDENTIAL_CHECK_SCHEDULE: credentialCheckSchedule
  NOTIFY_URL: notifyUrl
  NOTIFY_FORMAT: notifyFormat
}

resource rg 'Microsoft.Resources/resourceGroups@2024-03-01' = {
  name: '${abbrs.resourcesResourceGroups}${environmentName}'
  location: location
  tags: tags
}

module identity 'app/identity.bicep' = {
  name: 'identity'
  scope: rg
  params: {
    name: '${abbrs.managedIdentityUserAssignedIdentities}${resourceToken}'
    location: location
    tags: tags
  }
}

module storage 'app/storage.bicep' = {
  name: 'storage'
  scope: rg
  params: {
    name: '${abbrs.storageStorageAccounts}${resourceToken}'
    location: location
    tags: tags
    deploymentContainerName: deploymentContainerName
    stateTableName: stateTableName
    deferredQueueName: deferredQueueName
    importQueueName: importQueueName
    tenantQueueName: tenantQueueName
    deviceSyncQueueName: deviceSyncQueueName
    skuName: storageSku
  }
}

module monitoring 'app/monitoring.bicep' = {
  name: 'monitoring'
  scope: rg
  params: {
    logAnalyticsName: '${abbrs.operationalInsightsWorkspaces}${resourceToken}'
    applicationInsightsName: '${abbrs.insightsComponents}${resourceToken}'
    location: location
    tags: tags
  }
}

module rbac 'app/rbac.bicep' = {
  name: 'rbac'
  scope: rg
  params: {
    storageAccountName: storage.outputs.name
    applicationInsightsName: monitoring.outputs.applicationInsightsName
    principalId: identity.outputs.principalId
  }
}

// The workbook and the alerts read the app's telemetry (shared/common/telemetry.py) through Entra ID:
// the workbook as whoever opens it, the alert rules as a user-assigned identity of their own with
// read-only roles on the component and its workspace (app/alerts.bicep says why). Without an
// alert e-mail nothing of the alerts is deployed.
module workbook 'app/workbook.bicep' = if (deployWorkbook) {
  name: 'workbook'
  scope: rg
  params: {
    location: location
    tags: tags
    applicationInsightsName: monitoring.outputs.applicationInsightsName
    displayName: 'intune-sync (${environmentName})'
  }
}

module alerts 'app/alerts.bicep' = if (!empty(alertEmail)) {
  name: 'alerts'
  scope: rg
  params: {
    location: location
    tags: tags
    resourceToken: resourceToken
    identityName: '${abbrs.managedIdentityUserAssignedIdentities}alerts-${resourceToken}'
    applicationInsightsName: monitoring.outputs.applicationInsightsName
    logAnalyticsName: monitoring.outputs.logAnalyticsName
    alertEmail: alertEmail
  }
}

// Many tenants (multiTenant=true): the multi-tenant app registration and its federated identity
// credential (subject: the identity's principal id). The function app takes its client id
// (MULTI_TENANT_CLIENT_ID), so it is created before the app. Entra ID does not check the subject
// when the credential is created, so the identity's replication delay (see the grant below) does
// not apply here. Its output is read only under `multiTenant ?` (hence the `!`): ARM evaluates
// only the branch if() takes, so with multiTenant=false nothing reads the skipped module.
module multiTenantApp 'app/multitenant.bicep' = if (multiTenant) {
  name: 'multitenant-app'
  scope: rg
  params: {
    uniqueName: 'intune-sync-${resourceToken}'
    displayName: multiTenantAppDisplayName
    identityPrincipalId: identity.outputs.principalId
    appRoles: graphAppRoles
  }
}

// Entra ID sign-in for callers (callerAuth=entra): the API's app registration with the app roles
// the routes require, and its service principal, on which roles are assigned (docs/security.md).
// Like the multi-tenant app above, it is created before the function app, which takes its client
// id (API_CLIENT_ID), and read only under `entraCallers ?`.
module callerApi 'app/callerapi.bicep' = if (entraCallers) {
  name: 'caller-api'
  scope: rg
  params: {
    uniqueName: 'intune-sync-api-${resourceToken}'
    displayName: callerApiDisplayName
    callerTenants: callerTenants
    appHostName: functionAppHostName // the web console's redirect URI, https://<host>/api/console
    consoleRedirectUris: consoleRedirectUris
  }
}

module api 'app/api.bicep' = {
  name: 'api'
  scope: rg
  params: {
    name: functionAppName
    planName: '${abbrs.webServerFarms}${resourceToken}'
    location: location
    tags: tags
    identityId: identity.outputs.id
    identityClientId: identity.outputs.clientId
    storageAccountName: storage.outputs.name
    deploymentContainerName: deploymentContainerName
    applicationInsightsName: monitoring.outputs.applicationInsightsName
    maximumInstanceCount: maximumInstanceCount
    appSettings: syncSettings
  }
  dependsOn: [rbac]
}

// The grant takes the identity's principalId from the identity module's output, so ARM cannot
// start it before the identity exists. It also waits for the function app (dependsOn) so that it
// runs last: Entra ID replicates a new managed identity's service principal with a delay, and
// the Graph extension has no principalType hint like role assignments have, so a grant made
// seconds after the identity can fail ("Not a valid reference update"). Running last gives
// Entra ID the minute or two the plan and app take; it makes the failure rarer, not impossible.
// A rerun of `azd provision` fixes it (docs/deploy.md).
module graphPermission 'app/graph-permission.bicep' = if (grantGraphPermission) {
  name: 'graph-permission'
  scope: rg
  params: {
    principalId: identity.outputs.principalId
    appRoles: graphAppRoles
  }
  dependsOn: [api]
}

output AZURE_LOCATION string = location
output AZURE_RESOURCE_GROUP string = rg.name
output AZURE_FUNCTION_APP_NAME string = api.outputs.name
output AZURE_FUNCTION_APP_URL string = api.outputs.url
output AZURE_IDENTITY_PRINCIPAL_ID string = identity.outputs.principalId
output AZURE_IDENTITY_CLIENT_ID string = identity.outputs.clientId
output GRAPH_PERMISSION_GRANTED bool = grantGraphPermission
output GRAPH_APP_ROLES array = graphAppRoles
output CALLER_AUTH string = callerAuth
output API_CLIENT_ID string = entraCallers ? callerApi!.outputs.appId : ''
output MULTI_TENANT_CLIENT_ID string = multiTenant ? multiTenantApp!.outputs.appId : multiTenantClientId
output AZURE_WORKBOOK_ID string = deployWorkbook ? workbook!.outputs.id : ''
output ALERTS_ENABLED bool = !empty(alertEmail)
output ALERT_RULE_IDS array = empty(alertEmail) ? [] : alerts!.outputs.ruleIds
