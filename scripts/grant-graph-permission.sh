#!/usr/bin/env bash
# Grants the app's managed identity the Microsoft Graph application roles its enabled targets need
# (SYNC_TARGETS; shared/graph-roles.json), for deployments made with GRANT_GRAPH_PERMISSION=false.
#
# Run it as someone who may grant app roles: Privileged Role Administrator (or an app with
# AppRoleAssignment.ReadWrite.All and Application.Read.All). Idempotent: roles already granted
# are left alone.
#
#   scripts/grant-graph-permission.sh [<managed identity principal id>]
#
# Without an argument the principal id comes from the azd environment (AZURE_IDENTITY_PRINCIPAL_ID).
set -euo pipefail
cd "$(dirname "$0")/.."

principal=${1:-$(azd env get-value AZURE_IDENTITY_PRINCIPAL_ID)}
graph_app_id=00000003-0000-0000-c000-000000000000
# The Graph endpoint of the cloud az is logged in to (public, US Gov, China...).
graph=$(az cloud show --query endpoints.microsoftGraphResourceId -o tsv)
graph=${graph%/}
# The roles of the enabled targets (shared/graph-roles.json), as the Bicep grants them.
targets=${SYNC_TARGETS:-$(azd env get-value SYNC_TARGETS 2>/dev/null || echo autopilot)}
roles=$(SYNC_TARGETS="$targets" python3 -c 'import os, sys; sys.path.insert(0, "."); from shared.common.permissions import roles_for; print(" ".join(roles_for(t.strip() for t in os.environ["SYNC_TARGETS"].split(",") if t.strip())))')
graph_sp=$(az ad sp show --id "$graph_app_id" --query id -o tsv)

for role in $roles; do
  role_id=$(az ad sp show --id "$graph_app_id" \
    --query "appRoles[?value=='$role' && contains(allowedMemberTypes, 'Application')].id | [0]" -o tsv)
  if [ -z "$role_id" ]; then
    echo "Microsoft Graph has no application role named $role" >&2
    exit 1
  fi
  granted=$(az rest --method GET --url "$graph/v1.0/servicePrincipals/$principal/appRoleAssignments" \
    --query "value[?appRoleId=='$role_id'].id | [0]" -o tsv)
  if [ -n "$granted" ]; then
    echo "$role: already granted to $principal"
    continue
  fi
  az rest --method POST --url "$graph/v1.0/servicePrincipals/$principal/appRoleAssignments" \
    --headers Content-Type=application/json \
    --body "{\"principalId\": \"$principal\", \"resourceId\": \"$graph_sp\", \"appRoleId\": \"$role_id\"}" >/dev/null
  echo "$role: granted to $principal"
done
