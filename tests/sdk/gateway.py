"""Drives gcpool's gateway mode with the real Genesys Python SDK (PureCloudPlatformClientV2).

Run by tests/gateway_sdks.rs in the virtualenv scripts/sdk-env.sh makes. Reads
GCPOOL_HOST, GCPOOL_PORT, GCPOOL_LOGIN_PATH, GCPOOL_API_PATH, GCPOOL_CLIENT_ID and
GCPOOL_CLIENT_SECRET; logs in with a wrong secret, then the right one, through the SDK's
own login code, calls a few APIs and prints what happened as JSON (never the token).
"""

import json
import os

import PureCloudPlatformClientV2 as gc
from PureCloudPlatformClientV2.rest import ApiException


def client():
    api = gc.api_client.ApiClient()
    api.set_gateway(
        os.environ["GCPOOL_HOST"],
        "http",
        int(os.environ["GCPOOL_PORT"]),
        os.environ["GCPOOL_LOGIN_PATH"],
        os.environ["GCPOOL_API_PATH"],
    )
    return api


def main():
    client_id = os.environ["GCPOOL_CLIENT_ID"]
    out = {"sdk": "python", "calls": []}

    try:
        client().get_client_credentials_token(client_id, "not-the-key")
        out["wrong_secret"] = {"status": 200}
    except ApiException as e:
        out["wrong_secret"] = {"status": e.status, "body": json.loads(e.body)}

    api = client().get_client_credentials_token(client_id, os.environ["GCPOOL_CLIENT_SECRET"])
    out["token_length"] = len(api.access_token)

    users = gc.UsersApi(api)
    user = users.get_user("u-1")
    out["calls"].append({"op": "UsersApi.get_user", "echo": json.loads(api.last_response.data),
                         "model": type(user).__name__})
    listing = users.get_users(page_size=2)
    out["calls"].append({"op": "UsersApi.get_users", "echo": json.loads(api.last_response.data),
                         "model": type(listing).__name__})
    queue = gc.RoutingApi(api).get_routing_queue("q-1")
    out["calls"].append({"op": "RoutingApi.get_routing_queue",
                         "echo": json.loads(api.last_response.data),
                         "model": type(queue).__name__})

    # A token the SDK did not get from the login is refused: gcpool's 401, Genesys-shaped.
    forged = client()
    forged.access_token = "gcp1.aXZy.9999999999.AAAA"
    try:
        gc.UsersApi(forged).get_user("u-1")
        out["forged"] = {"status": 200}
    except ApiException as e:
        out["forged"] = {"status": e.status, "body": json.loads(e.body)}

    print(json.dumps(out))


main()
