// Storage for the Functions host, the Flex Consumption deployment package and the state table.
// Keyless: shared-key access is off, so only Entra identities with data roles get in.
param name string
param location string
param tags object
param deploymentContainerName string
param stateTableName string
param deferredQueueName string
param importQueueName string
param tenantQueueName string
param deviceSyncQueueName string
@description('Redundancy (SKU) of the account; chosen in main.bicep (storageSku).')
param skuName string

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' = {
  name: name
  location: location
  tags: tags
  kind: 'StorageV2'
  sku: { name: skuName }
  // checkov:skip=CKV_AZURE_206: the redundancy is a parameter (storageSku, LRS by default, ZRS where the region has zones): the state is a cooldown record that Graph's own 429 backs up, and the app runs in one region; geo-replication adds cost, not safety
  // checkov:skip=CKV_AZURE_35: access is Entra-only (shared keys off, data roles per identity); denying public networks needs VNet integration and private endpoints, an opt-in described in docs/deploy.md
  // checkov:skip=CKV_AZURE_59: same reason as CKV_AZURE_35: the Flex Consumption app reaches storage over its public endpoint unless VNet-integrated
  properties: {
    accessTier: 'Hot'
    allowBlobPublicAccess: false
    allowSharedKeyAccess: false
    allowCrossTenantReplication: false
    defaultToOAuthAuthentication: true
    isLocalUserEnabled: false
    isSftpEnabled: false
    minimumTlsVersion: 'TLS1_2'
    supportsHttpsTrafficOnly: true
    publicNetworkAccess: 'Enabled'
    networkAcls: {
      bypass: 'AzureServices'
      defaultAction: 'Allow'
    }
    encryption: {
      keySource: 'Microsoft.Storage'
      requireInfrastructureEncryption: true
      services: {
        blob: { enabled: true, keyType: 'Account' }
        file: { enabled: true, keyType: 'Account' }
        table: { enabled: true, keyType: 'Account' }
        queue: { enabled: true, keyType: 'Account' }
      }
    }
  }
}

resource blobService 'Microsoft.Storage/storageAccounts/blobServices@2023-05-01' = {
  parent: storage
  name: 'default'
  properties: {
    deleteRetentionPolicy: { enabled: true, days: 7 }
    containerDeleteRetentionPolicy: { enabled: true, days: 7 }
  }
}

resource deploymentContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = {
  parent: blobService
  name: deploymentContainerName
  properties: { publicAccess: 'None' }
}

resource tableService 'Microsoft.Storage/storageAccounts/tableServices@2023-05-01' = {
  parent: storage
  name: 'default'
}

resource stateTable 'Microsoft.Storage/storageAccounts/tableServices/tables@2023-05-01' = {
  parent: tableService
  name: stateTableName
}

resource queueService 'Microsoft.Storage/storageAccounts/queueServices@2023-05-01' = {
  parent: storage
  name: 'default'
}

resource deferredQueue 'Microsoft.Storage/storageAccounts/queueServices/queues@2023-05-01' = {
  parent: queueService
  name: deferredQueueName
}

resource importQueue 'Microsoft.Storage/storageAccounts/queueServices/queues@2023-05-01' = {
  parent: queueService
  name: importQueueName
}

resource tenantQueue 'Microsoft.Storage/storageAccounts/queueServices/queues@2023-05-01' = {
  parent: queueService
  name: tenantQueueName
}

// Steps of bulk device sync jobs (POST /api/devices/sync); the host's queue trigger runs them.
resource deviceSyncQueue 'Microsoft.Storage/storageAccounts/queueServices/queues@2023-05-01' = {
  parent: queueService
  name: deviceSyncQueueName
}

output name string = storage.name
output blobEndpoint string = storage.properties.primaryEndpoints.blob
output tableEndpoint string = storage.properties.primaryEndpoints.table
