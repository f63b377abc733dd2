// Many tenants from one deployment (multiTenant=true): a multi-tenant app registration whose only
// credential is the app's user-assigned managed identity (a federated identity credential), so no
// secret or certificate exists anywhere. Customer tenants consent to this app; the function asks
// for a token of tenant T as this app, asserting with the identity's token for the exchange
// audience (shared/clients/identity.py, TenantCredentials).
//
// Deploying it needs, for the deployer, the right to create applications (Application Developer
// or more, or the default user right if the tenant has not turned it off) and to read the
// Microsoft Graph service principal (the role ids below). Microsoft Graph Bicep deploys in the
// public cloud only (Microsoft's "Microsoft Graph Bicep feature limitations" page).
extension microsoftGraphV1

@description('Alternate key of the app registration: unique in the tenant, immutable.')
param uniqueName string

@description('Name customer administrators see on the consent screen.')
param displayName string

@description('Object (principal) id of the user-assigned managed identity the app trusts: the subject of the federated identity credential.')
param identityPrincipalId string

@description('Graph application roles the app requires in every customer tenant: those of the enabled targets and, always, of the daily Apple credentials check (shared/graph-roles.json).')
param appRoles array

var microsoftGraphAppId = '00000003-0000-0000-c000-000000000000'

// The audience of the identity's token that Entra ID exchanges, per cloud (environment().name);
// the same table as shared/clients/identity.py (EXCHANGE_AUDIENCES).
var exchangeAudiences = {
  AzureCloud: 'api://AzureADTokenExchange'
  AzureUSGovernment: 'api://AzureADTokenExchangeUSGov'
  AzureChinaCloud: 'api://AzureADTokenExchangeChina'
}
var exchangeAudience = contains(exchangeAudiences, environment().name) ? exchangeAudiences[environment().name] : exchangeAudiences.AzureCloud

// The identity's tokens are issued by the Entra authority of this tenant (the tenant that owns
// both the identity and the app registration).
var issuer = '${environment().authentication.loginEndpoint}${tenant().tenantId}/v2.0'

// Role ids are resolved by name, as in graph-permission.bicep.
resource microsoftGraph 'Microsoft.Graph/servicePrincipals@v1.0' existing = {
  appId: microsoftGraphAppId
}

resource multiTenantApp 'Microsoft.Graph/applications@v1.0' = {
  uniqueName: uniqueName
  displayName: displayName
  signInAudience: 'AzureADMultipleOrgs'
  notes: 'intune-sync: many tenants from one deployment. Its only credential is the function app\'s user-assigned managed identity (federated identity credential); add no secret or certificate.'
  // What a customer's administrator consents to: the application permissions of the enabled targets
  // and of the daily Apple credentials check (DeviceManagementServiceConfig.Read.All).
  requiredResourceAccess: [
    {
      resourceAppId: microsoftGraphAppId
      resourceAccess: [
        for role in appRoles: {
          id: filter(microsoftGraph.appRoles, r => r.value == role)[0].id
          type: 'Role'
        }
      ]
    }
  ]

  // In the extension the name of a federated identity credential is '<app uniqueName>/<name>'.
  resource identityTrust 'federatedIdentityCredentials@v1.0' = {
    name: '${multiTenantApp.uniqueName}/function-app-identity'
    description: 'The intune-sync function app\'s user-assigned managed identity.'
    issuer: issuer
    subject: identityPrincipalId
    audiences: [exchangeAudience]
  }
}

output appId string = multiTenantApp.appId
output objectId string = multiTenantApp.id
