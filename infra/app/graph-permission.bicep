// Grants the managed identity the Graph application roles the sync actions and the daily Apple
// credentials check need, resolving each role id by name from the Microsoft Graph service
// principal. Deploying this needs
// AppRoleAssignment.ReadWrite.All and Application.Read.All (e.g. Privileged Role Administrator);
// scripts/grant-graph-permission.sh does the same afterwards for deployers without them.
extension microsoftGraphV1

@description('Object (principal) id of the managed identity.')
param principalId string

@description('Graph application roles to grant: those of the enabled targets and, always, of the credentials check (shared/graph-roles.json).')
param appRoles array

var microsoftGraphAppId = '00000003-0000-0000-c000-000000000000'

resource microsoftGraph 'Microsoft.Graph/servicePrincipals@v1.0' existing = {
  appId: microsoftGraphAppId
}

resource grants 'Microsoft.Graph/appRoleAssignedTo@v1.0' = [
  for role in appRoles: {
    principalId: principalId
    resourceId: microsoftGraph.id
    appRoleId: filter(microsoftGraph.appRoles, r => r.value == role)[0].id
  }
]

output grantedRoles array = appRoles
