# The rules of policies/meme-game.yaml in Rego, for regorus and OPA (issue 8 benchmark).
#
# Input (one decision):
#   {"operation": "submit-answer",            the operation, matched by the caller (see
#                                             BENCHMARKS.md: every engine gets it pre-matched)
#    "params": {"userId": "user.3"},          path parameters of the matched template
#    "claims": {...},                         the verified token's claims, as in the JWT
#    "client_ip": "10.1.2.3"}                 the client address; absent when unknown
#
# `data.portcullis.memegame.allow` is true or false. The claims are read as `input.claims.x`
# throughout: an alias (`claims := input.claims`) costs regorus about 15% more.
package portcullis.memegame

import rego.v1

default allow := false

# Portcullis' `delegated`: the token has a `sub` that is neither its `client_id` nor `azp`.
is_client_token if input.claims.sub == input.claims.client_id

is_client_token if input.claims.sub == input.claims.azp

delegated if {
	is_string(input.claims.sub)
	not is_client_token
}

# groupsClaim `groups`: a list of names, or one name as a string.
groups := input.claims.groups if is_array(input.claims.groups)

groups := [input.claims.groups] if is_string(input.claims.groups)

default groups := []

# scopeClaim `scope`: a space-separated string, or a list.
scopes := split(input.claims.scope, " ") if is_string(input.claims.scope)

scopes := input.claims.scope if is_array(input.claims.scope)

default scopes := []

# submit-answer: delegated, group players, scope answers:write, sub == {path.userId}
allow if {
	input.operation == "submit-answer"
	delegated
	"players" in groups
	"answers:write" in scopes
	input.claims.sub == input.params.userId
}

# read-answers: moderators, or the user themself
allow if {
	input.operation == "read-answers"
	"moderators" in groups
}

allow if {
	input.operation == "read-answers"
	input.claims.sub == input.params.userId
}

# browse-memes: scopes anyOf [memes:read, memes:write]
allow if {
	input.operation == "browse-memes"
	some scope in ["memes:read", "memes:write"]
	scope in scopes
}

# manage-memes: groups allOf [staff, meme-editors], not account_status == suspended
allow if {
	input.operation == "manage-memes"
	"staff" in groups
	"meme-editors" in groups
	not input.claims.account_status == "suspended"
}

# leaderboard: no rules
allow if input.operation == "leaderboard"

# game-internals: client in the operations network, a client-credentials token of an
# operators' client
allow if {
	input.operation == "game-internals"
	from_operations_network
	not delegated
	input.claims.client_id in {"ops-dashboard", "ops-cli"}
}

from_operations_network if {
	some cidr in ["10.0.0.0/8", "127.0.0.1/32", "::1/128"]
	net.cidr_contains(cidr, input.client_ip)
}
