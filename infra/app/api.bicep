// Flex Consumption plan and the Linux function app (Python 3.11), identity-based everything.
param name string
param planName string
param location string
param tags object
param identityId string
param identityClientId string
param storageAccountName string
param deploymentContainerName string
param applicationInsightsName string
param maximumInstanceCount int
@secure() // NOTIFY_URL may carry a signature; keep it out of deployment history
@description('The sync settings the code reads (built in main.bicep).')
param appSettings object

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: storageAccountName
}

resource applicationInsights 'Microsoft.Insights/components@2020-02-02' existing = {
  name: applicationInsightsName
}

// Entra's authority host without its trailing slash (https://login.microsoftonline.com in the
// public cloud), as azure-identity and the app's token validation read AZURE_AUTHORITY_HOST.
var loginEndpoint = environment().authentication.loginEndpoint
var authorityHost = endsWith(loginEndpoint, '/') ? substring(loginEndpoint, 0, length(loginEndpoint) - 1) : loginEndpoint

// Everything the code and the host read: the sync settings plus identity-based storage,
// the managed identity's client id, the home tenant and its authority (callers' tokens with
// CALLER_AUTH=entra), and Entra-authenticated Application Insights.
var allSettings = union(appSettings, {
  AZURE_CLIENT_ID: identityClientId
  AZURE_TENANT_ID: tenant().tenantId
  AZURE_AUTHORITY_HOST: authorityHost
  AzureWebJobsStorage__accountName: storage.name
  AzureWebJobsStorage__blobServiceUri: storage.properties.primaryEndpoints.blob
  AzureWebJobsStorage__tableServiceUri: storage.properties.primaryEndpoints.table
  AzureWebJobsStorage__queueServiceUri: storage.properties.primaryEndpoints.queue
  AzureWebJobsStorage__credential: 'managedidentity'
  AzureWebJobsStorage__clientId: identityClientId
  APPLICATIONINSIGHTS_CONNECTION_STRING: applicationInsights.properties.ConnectionString
  APPLICATIONINSIGHTS_AUTHENTICATION_STRING: 'ClientId=${identityClientId};Authorization=AAD'
})

resource plan 'Microsoft.Web/serverfarms@2024-04-01' = {
  name: planName
  location: location
  tags: tags
  kind: 'functionapp'
  sku: {
    tier: 'FlexConsumption'
    name: 'FC1'
  }
  // checkov:skip=CKV_AZURE_225: a scheduled sync tolerates a zone outage (the state is a cooldown record that Graph's own 429 backs up; Graph is the source of truth); zone redundancy narrows the regions Flex Consumption deploys to
  properties: {
    reserved: true
  }
}

resource functionApp 'Microsoft.Web/sites@2024-04-01' = {
  name: name
  location: location
  tags: union(tags, { 'azd-service-name': 'api' })
  kind: 'functionapp,linux'
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: { '${identityId}': {} }
  }
  // checkov:skip=CKV_AZURE_222: the HTTP API is a webhook for Power Automate and scripts, so it must be reachable; every route but /api/health and the valet-token polls needs a function key or, with CALLER_AUTH=entra, an Entra ID token the app validates
  // checkov:skip=CKV_AZURE_17: callers (Power Automate connectors, webhooks) authenticate with function keys or Entra ID; they cannot present client certificates
  // checkov:skip=CKV_AZURE_212: Flex Consumption scales from zero by design; an always-on minimum would cost money at idle for an hourly timer
  // checkov:skip=CKV_AZURE_213: App Service health check is not available on Flex Consumption; /api/health serves external probes instead
  properties: {
    serverFarmId: plan.id
    httpsOnly: true
    clientCertMode: 'Optional'
    // checkov:skip=CKV_AZURE_78: Flex Consumption rejects siteConfig.ftpsState (ARM BadRequest 51021; Microsoft lists it as unsupported there); FTP is off through the ftp and scm basicPublishingCredentialsPolicies below (allow: false)
    siteConfig: {
      minTlsVersion: '1.2'
      scmMinTlsVersion: '1.2'
      // No ftpsState, alwaysOn, use32BitWorkerProcess, linuxFxVersion, …: Flex Consumption rejects them
      // (tests/test_infra.py lists them). The runtime and scale live in functionAppConfig.
      http20Enabled: true
      appSettings: [for setting in items(allSettings): { name: setting.key, value: setting.value }]
    }
    functionAppConfig: {
      deployment: {
        storage: {
          type: 'blobContainer'
          value: '${storage.properties.primaryEndpoints.blob}${deploymentContainerName}'
          authentication: {
            type: 'UserAssignedIdentity'
            userAssignedIdentityResourceId: identityId
          }
        }
      }
      scaleAndConcurrency: {
        maximumInstanceCount: maximumInstanceCount
        instanceMemoryMB: 2048
      }
      runtime: {
        name: 'python'
        version: '3.11'
      }
    }
  }
}

// No publishing passwords, and with them no FTP (Flex Consumption has no ftpsState to turn it off):
// deployments go through Entra ID (azd, az functionapp deploy).
resource ftpCredentials 'Microsoft.Web/sites/basicPublishingCredentialsPolicies@2024-04-01' = {
  parent: functionApp
  name: 'ftp'
  properties: { allow: false }
}

resource scmCredentials 'Microsoft.Web/sites/basicPublishingCredentialsPolicies@2024-04-01' = {
  parent: functionApp
  name: 'scm'
  properties: { allow: false }
}

output name string = functionApp.name
output url string = 'https://${functionApp.properties.defaultHostName}'
