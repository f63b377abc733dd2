// An Azure Monitor workbook over the app's own telemetry (shared/common/telemetry.py: one `IntuneSync {json}`
// trace per sync, deferred firing, watcher finding, import step, tenant outcome, timer tick, health
// rating, Apple credential check): syncs over time by outcome and target, failures with their
// reasons and Graph request ids, every unit's last good sync and health, deferred syncs, Autopilot
// import jobs, every tenant's next expiring Apple credential, and tenants when there are some. The workbook itself is workbook.json, kept apart so that tests/test_monitoring.py
// can check every query in it against telemetry.FIELDS and telemetry.EVENTS.
//
// Keyless: a workbook holds no credential; its queries run as whoever opens it, through Entra ID
// and RBAC on the Application Insights component (whose local auth is off, monitoring.bicep).
param location string
param tags object
param applicationInsightsName string
@description('Name shown in the portal\'s workbook gallery.')
param displayName string

resource applicationInsights 'Microsoft.Insights/components@2020-02-02' existing = {
  name: applicationInsightsName
}

var definition = loadJsonContent('workbook.json')

resource workbook 'Microsoft.Insights/workbooks@2023-06-01' = {
  // A workbook's name must be a GUID; derived from the component so that a redeploy updates it.
  name: guid(applicationInsights.id, 'intune-sync-workbook')
  location: location
  tags: tags
  kind: 'shared'
  properties: {
    displayName: displayName
    category: 'workbook'
    description: 'intune-sync: syncs, failures, unit health, deferred syncs, Autopilot imports and tenants.'
    version: definition.version
    // Shown under the component's Workbooks, and its queries run there. fallbackResourceIds (as in
    // Microsoft's workbook ARM templates) is the resource the queries use when the workbook is
    // opened from Azure Monitor's gallery instead, where no resource is selected.
    sourceId: applicationInsights.id
    serializedData: string(union(definition, { fallbackResourceIds: [applicationInsights.id] }))
  }
}

output id string = workbook.id
