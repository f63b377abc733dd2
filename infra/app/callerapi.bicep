// Entra ID sign-in for callers (callerAuth=entra): the API's app registration, its app roles and its
// service principal. People, groups and apps (flows' connections, scripts) get an app role
// assignment on the service principal; the function app validates their access tokens itself
// (shared/api/callerauth.py) and checks the role of each route (docs/security.md). No secret or
// certificate: the API only receives tokens, it never signs in as itself.
//
// Deploying it needs the right to create applications (Application Developer or more, or the
// default user right if the tenant has not turned it off). Microsoft Graph Bicep deploys in the
// public cloud only (Microsoft's "Microsoft Graph Bicep feature limitations" page).
extension microsoftGraphV1

@description('Alternate key of the app registration: unique in the tenant, immutable.')
param uniqueName string

@description('Name shown in the Entra admin center (Enterprise applications) and on consent screens.')
param displayName string

@description('Comma list of more tenant ids whose users and apps may call; non-empty makes the registration multi-tenant (AzureADMultipleOrgs), the app itself then admits only the listed tenants.')
param callerTenants string = ''

@description('Host name of the function app (<name>.azurewebsites.net): the web console at https://<host>/api/console signs its users in with this registration (docs/console.md).')
param appHostName string

@description('Comma list of more web console URLs to keep on the registration beside https://<appHostName>/api/console (a custom domain, a Front Door host: https://<host>/api/console). Each provision sets the whole list, so name every one here.')
param consoleRedirectUris string = ''

// The roles the app checks, route by route (shared/api/callerauth.py, ROLES; tests/test_infra.py
// compares the two). The ids are stable per registration: guid() of the unique name and the role.
var roles = [
  {
    value: 'Sync.Run'
    displayName: 'Run syncs'
    description: 'Start, defer and wait for syncs of every target (POST /api/sync/..., also for a registered tenant).'
  }
  {
    value: 'Devices.Import'
    displayName: 'Import Autopilot devices'
    description: 'Import Windows Autopilot hardware hashes and follow the imports (/api/autopilot/...).'
  }
  {
    value: 'Devices.Sync'
    displayName: 'Sync managed devices in bulk'
    description: 'Start bulk device syncs and read their jobs (/api/devices/sync..., also for a registered tenant).'
  }
  {
    value: 'Tenants.Manage'
    displayName: 'Manage the tenant registry'
    description: 'Register, change and remove customer tenants (PUT and DELETE /api/tenants/{tenantId}).'
  }
  {
    value: 'Status.Read'
    displayName: 'Read sync status and tenants'
    description: 'Read the sync status and health rating of the targets (GET /api/sync/status, a tenant\'s status) and the tenant registry (GET /api/tenants).'
  }
]

var signInAudience = empty(trim(callerTenants)) ? 'AzureADMyOrg' : 'AzureADMultipleOrgs'

var notes = 'intune-sync: callers (people, groups, flows) get an app role of this API. It has no credential; add no secret or certificate.'

// The web console (docs/console.md) is a single-page app served by the function app itself: MSAL.js
// signs its user in with the authorization code flow and PKCE and comes back to the console's page
// (the SPA platform: no secret, tokens only to this redirect URI), then asks for the delegated scope
// below, api://<appId>/user_impersonation. The token it gets carries the user's app roles, as any caller's.
var consoleRedirectUri = 'https://${appHostName}/api/console'
var redirectUris = concat([consoleRedirectUri], empty(consoleRedirectUris) ? [] : split(consoleRedirectUris, ','))

resource callerApi 'Microsoft.Graph/applications@v1.0' = {
  uniqueName: uniqueName
  displayName: displayName
  signInAudience: signInAudience
  notes: notes
  spa: {
    redirectUris: redirectUris
  }
  appRoles: [
    for role in roles: {
      id: guid(uniqueName, role.value)
      value: role.value
      displayName: role.displayName
      description: role.description
      allowedMemberTypes: ['User', 'Application'] // people and groups, and apps (client credentials)
      isEnabled: true
    }
  ]
  api: {
    // v2 access tokens: issuer {authority}/{tid}/v2.0 and audience the app's client id, as the app validates.
    requestedAccessTokenVersion: 2
    // A delegated permission for the Power Automate connector's own registration (OAuth 2.0 sign-in
    // of the connection's user) and for the web console: it lets them ask for a token for this API.
    // It grants nothing by itself; the app authorizes by the token's `roles` claim only.
    oauth2PermissionScopes: [
      {
        id: guid(uniqueName, 'user_impersonation')
        value: 'user_impersonation'
        type: 'User'
        adminConsentDisplayName: 'Call intune-sync'
        adminConsentDescription: 'Lets the app call the intune-sync API as the signed-in user, within the app roles assigned to that user.'
        userConsentDisplayName: 'Call intune-sync'
        userConsentDescription: 'Lets the app call the intune-sync API as you, within the app roles assigned to you.'
        isEnabled: true
      }
    ]
  }
}

// The identifier URI api://<appId> needs the appId Entra ID assigns on creation, which a resource
// cannot read from itself. Microsoft Graph Bicep has no placeholder for it (msgraph-bicep-types
// issue 239: the documented default api://<appId> is not set unless given), so the registration
// is declared a second time with the same uniqueName: Graph Bicep upserts by uniqueName, and
// reading callerApi.appId orders this update after the creation. It repeats every property set
// above, so neither declaration undoes the other on a rerun. Should it ever fail, the app still
// accepts the audience <appId> (v2 tokens carry it whatever the requested scope), and the URI can
// be added with: az ad app update --id <appId> --identifier-uris api://<appId>
resource callerApiUri 'Microsoft.Graph/applications@v1.0' = {
  uniqueName: uniqueName
  displayName: displayName
  signInAudience: signInAudience
  notes: notes
  spa: callerApi.spa
  appRoles: callerApi.appRoles
  api: {
    requestedAccessTokenVersion: 2
    oauth2PermissionScopes: callerApi.api.oauth2PermissionScopes
  }
  identifierUris: ['api://${callerApi.appId}']
}

// The enterprise application: app role assignments are made on it. Assignment required: Entra ID
// issues no token for this API to a user or app without an assignment (docs/security.md).
resource callerApiPrincipal 'Microsoft.Graph/servicePrincipals@v1.0' = {
  appId: callerApiUri.appId
  appRoleAssignmentRequired: true
  notes: notes
}

output appId string = callerApi.appId
output identifierUri string = 'api://${callerApi.appId}'
output consoleRedirectUri string = consoleRedirectUri
output servicePrincipalId string = callerApiPrincipal.id
output roles array = [for role in roles: role.value]
