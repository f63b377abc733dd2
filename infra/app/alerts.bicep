// Log search alerts e-mailed to an operator (main.bicep deploys this module only when alertEmail is
// set): failed syncs, units rated unhealthy, and expiring Apple credentials. The queries read the
// app's own telemetry (shared/common/telemetry.py) and name only its fields and events
// (tests/test_monitoring.py checks).
//
// Three rules, not one combined: the signals need different windows and cadences. A failed sync is
// an event, worth knowing within minutes, so its rule looks at the last 15 minutes every 15 minutes.
// Health is a state, rated once per unit after each timer tick (hourly by default), so its rule looks
// at each unit's latest rating within 2 hours (longer than the timer interval, so that every unit
// has one) every hour. A credential's expiry is a state too, but checked once a day
// (CREDENTIAL_CHECK_SCHEDULE), so its rule looks at each credential's latest check within 26 hours.
// They also differ in severity, and each e-mail names what happened.
//
// Keyless: Application Insights and Log Analytics accept no keys (monitoring.bicep), and the rules
// query as a managed identity, through RBAC. Microsoft's "Create or edit a log search alert rule"
// (https://learn.microsoft.com/azure/azure-monitor/alerts/alerts-create-log-alert-rule, "Configure
// alert rule details", Identity): without a managed identity a rule runs with the permissions of
// whoever last edited it (here the deployer, and it breaks when they lose access); the identity
// must have a reader role on every workspace the query reads; a system-assigned identity has no
// permissions when the rule is created (they can only be granted afterwards), whereas a
// user-assigned one is created and given its permissions before the rule. Hence a user-assigned
// identity only the alerts use (the app's own identity has no need to read logs), with read-only
// roles on exactly what the rules read: Reader on the Application Insights component they are
// scoped to (its classic `traces` table, queried in the component's context) and Log Analytics
// Reader on the workspace that holds the component's data. The rules depend on both assignments,
// so that they exist before ARM creates a rule and validates its query. (A role assignment can
// take a few minutes to take effect; should a first `azd provision` still fail on a rule, run it
// again.)
param location string
param tags object
param resourceToken string
param identityName string
param applicationInsightsName string
param logAnalyticsName string
@minLength(3)
param alertEmail string

// Built-in roles (read-only).
var reader = 'acdd72a7-3385-48ef-bd42-f606fba81ae7'
var logAnalyticsReader = '73c42c96-874c-492b-b04d-ab87d138a893'

resource applicationInsights 'Microsoft.Insights/components@2020-02-02' existing = {
  name: applicationInsightsName
}

resource logAnalytics 'Microsoft.OperationalInsights/workspaces@2023-09-01' existing = {
  name: logAnalyticsName
}

resource alertIdentity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: identityName
  location: location
  tags: tags
}

resource readerOnComponent 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(applicationInsights.id, alertIdentity.id, reader)
  scope: applicationInsights
  properties: {
    principalId: alertIdentity.properties.principalId
    principalType: 'ServicePrincipal' // a new identity: ARM need not find it in Entra ID (replication delay)
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', reader)
  }
}

resource readerOnWorkspace 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(logAnalytics.id, alertIdentity.id, logAnalyticsReader)
  scope: logAnalytics
  properties: {
    principalId: alertIdentity.properties.principalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', logAnalyticsReader)
  }
}

resource actionGroup 'Microsoft.Insights/actionGroups@2023-01-01' = {
  name: 'ag-intunesync-${resourceToken}'
  location: 'global' // action groups are global resources
  tags: tags
  properties: {
    groupShortName: 'intune-sync' // at most 12 characters; the e-mails' sender name
    enabled: true
    emailReceivers: [
      {
        name: 'operator'
        emailAddress: alertEmail
        useCommonAlertSchema: true
      }
    ]
  }
}

// A failed sync: the app's request to Graph failed (sync, outcome failed), Graph reports that a
// sync it accepted failed (the watcher's syncFailed), or a deferred sync was given up (its askers
// were told "scheduled" and will not get it). One row per failure, counted per unit and
// tenant ("own": the app's own tenant); the rows, linked from the alert, carry the error code and
// Graph's request id (docs/operations.md).
var failedSyncsQuery = '''
traces
| where message startswith "IntuneSync "
| extend e = parse_json(substring(message, 11))
| where (e.event == "sync" and e.outcome == "failed") or (e.event == "watch" and e.outcome == "syncFailed") or (e.event == "deferred" and e.outcome == "givenUp")
| project timestamp, Unit = tostring(e.unit), Tenant = iff(isempty(tostring(e.tenant)), "own", tostring(e.tenant)), Target = tostring(e.target), ErrorCode = tostring(e.errorCode), HttpStatus = toint(e.httpStatus), GraphRequestId = tostring(e.graphRequestId), Reason = tostring(e.message)
'''

// A unit rated unhealthy: each unit's latest health event in the window (arg_max), if that rating is
// unhealthy. A unit rated healthy again drops out, and the alert resolves itself (autoMitigate).
var unhealthyUnitsQuery = '''
traces
| where message startswith "IntuneSync "
| extend e = parse_json(substring(message, 11))
| where e.event == "health"
| extend Unit = tostring(e.unit), Tenant = iff(isempty(tostring(e.tenant)), "own", tostring(e.tenant))
| summarize arg_max(timestamp, e) by Unit, Tenant
| where tostring(e.health) == "unhealthy"
| project timestamp, Unit, Tenant, Target = tostring(e.target), LastSyncAt = tostring(e.lastSyncAt), Reasons = tostring(e.message)
'''

// An expiring Apple credential (APNs certificate, ADE or VPP token) in any tenant: each credential's
// latest `expiry` record of the daily check (arg_max), if it rates the credential warning (within
// TOKEN_EXPIRY_WARNING_DAYS, or no expiry date) or unhealthy (within 7 days, expired, or an APNs
// certificate in its grace period). 26 hours: a day between two checks plus the check's own run
// and Log Analytics' ingestion latency, so that every credential has one record and one only counts.
// A renewed credential's next record is healthy, and the alert resolves itself (autoMitigate). The
// notifications to NOTIFY_URL tell each threshold (30, 14, 7, 1 days, expiry) once; the rule keeps
// the state in view for whoever reads the e-mails.
var expiringCredentialsQuery = '''
traces
| where message startswith "IntuneSync "
| extend e = parse_json(substring(message, 11))
| where timestamp > ago(26h) and e.event == "expiry" and isnotempty(tostring(e.credentialId))
| extend Credential = strcat(tostring(e.target), "/", tostring(e.credentialId)), Tenant = iff(isempty(tostring(e.tenant)), "own", tostring(e.tenant))
| summarize arg_max(timestamp, e) by Credential, Tenant
| where tostring(e.health) in ("warning", "unhealthy")
| project timestamp, Credential, Tenant, Kind = tostring(e.target), Name = tostring(e.name), AppleId = tostring(e.appleId), ExpiresAt = tostring(e.expiresAt), DaysLeft = todouble(e.daysLeft), State = tostring(e.outcome), Health = tostring(e.health)
'''

resource failedSyncs 'Microsoft.Insights/scheduledQueryRules@2023-12-01' = {
  name: 'intune-sync-failed-syncs-${resourceToken}'
  location: location
  tags: tags
  kind: 'LogAlert'
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: { '${alertIdentity.id}': {} }
  }
  properties: {
    displayName: 'intune-sync: failed sync'
    description: 'A sync failed: Graph refused the request, or reports that the sync failed. The alert\'s query results list each failure\'s error code (docs/operations.md) and Graph request id (for Microsoft support).'
    severity: 2
    enabled: true
    scopes: [applicationInsights.id]
    evaluationFrequency: 'PT15M'
    // Twice the frequency: a record ingested minutes late (Log Analytics' ingestion latency) still
    // falls in a window. The alert is stateful (autoMitigate), so a failure seen twice e-mails once.
    windowSize: 'PT30M'
    criteria: {
      allOf: [
        {
          query: failedSyncsQuery
          timeAggregation: 'Count'
          // One alert per unit and tenant, each firing and resolving on its own.
          dimensions: [
            {
              name: 'Unit'
              operator: 'Include'
              values: ['*']
            }
            {
              name: 'Tenant'
              operator: 'Include'
              values: ['*']
            }
          ]
          operator: 'GreaterThan'
          threshold: 0
          failingPeriods: {
            numberOfEvaluationPeriods: 1
            minFailingPeriodsToAlert: 1
          }
        }
      ]
    }
    autoMitigate: true
    actions: { actionGroups: [actionGroup.id] }
  }
  dependsOn: [readerOnComponent, readerOnWorkspace]
}

resource unhealthyUnits 'Microsoft.Insights/scheduledQueryRules@2023-12-01' = {
  name: 'intune-sync-unhealthy-units-${resourceToken}'
  location: location
  tags: tags
  kind: 'LogAlert'
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: { '${alertIdentity.id}': {} }
  }
  properties: {
    displayName: 'intune-sync: unit unhealthy'
    description: 'A unit (a target, connector or token) is rated unhealthy: no good sync for too long, an expiring token, or an error Graph reports. GET /api/sync/status gives the reasons.'
    severity: 1
    enabled: true
    scopes: [applicationInsights.id]
    evaluationFrequency: 'PT1H'
    windowSize: 'PT2H'
    criteria: {
      allOf: [
        {
          query: unhealthyUnitsQuery
          timeAggregation: 'Count'
          // One alert per unit and tenant, each firing and resolving on its own.
          dimensions: [
            {
              name: 'Unit'
              operator: 'Include'
              values: ['*']
            }
            {
              name: 'Tenant'
              operator: 'Include'
              values: ['*']
            }
          ]
          operator: 'GreaterThan'
          threshold: 0
          failingPeriods: {
            numberOfEvaluationPeriods: 1
            minFailingPeriodsToAlert: 1
          }
        }
      ]
    }
    autoMitigate: true
    actions: { actionGroups: [actionGroup.id] }
  }
  dependsOn: [readerOnComponent, readerOnWorkspace]
}

resource expiringCredentials 'Microsoft.Insights/scheduledQueryRules@2023-12-01' = {
  name: 'intune-sync-expiring-credentials-${resourceToken}'
  location: location
  tags: tags
  kind: 'LogAlert'
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: { '${alertIdentity.id}': {} }
  }
  properties: {
    displayName: 'intune-sync: Apple credential expiring'
    description: 'An Apple MDM push certificate, ADE or VPP token of a tenant expires within TOKEN_EXPIRY_WARNING_DAYS, or has expired (an APNs certificate must be renewed with the same Apple ID). The alert\'s query results name the tenant, the credential, its Apple ID and expiry; docs/operations.md ("Apple credentials") says where each is renewed.'
    severity: 2
    enabled: true
    scopes: [applicationInsights.id]
    evaluationFrequency: 'PT1H' // within the hour after the daily check
    // The query itself keeps the last 26 hours (ago(26h)); the window is the next one Azure Monitor
    // offers above that, and one bin, so each credential's latest record is counted once.
    windowSize: 'P2D'
    criteria: {
      allOf: [
        {
          query: expiringCredentialsQuery
          timeAggregation: 'Count'
          // One alert per credential and tenant, each firing and resolving on its own.
          dimensions: [
            {
              name: 'Credential'
              operator: 'Include'
              values: ['*']
            }
            {
              name: 'Tenant'
              operator: 'Include'
              values: ['*']
            }
          ]
          operator: 'GreaterThan'
          threshold: 0
          failingPeriods: {
            numberOfEvaluationPeriods: 1
            minFailingPeriodsToAlert: 1
          }
        }
      ]
    }
    autoMitigate: true
    actions: { actionGroups: [actionGroup.id] }
  }
  dependsOn: [readerOnComponent, readerOnWorkspace]
}

output ruleIds array = [failedSyncs.id, unhealthyUnits.id, expiringCredentials.id]
output actionGroupId string = actionGroup.id
output identityPrincipalId string = alertIdentity.properties.principalId
