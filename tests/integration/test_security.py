"""Hardening with auth off (a local service any web page its user opens could reach) and on:
cross-site requests and foreign Host headers are refused, sessions end with their key, the login
redirect stays on the site, keys are scoped (admin, expiry, creator), and the pages need no
inline code so the Content-Security-Policy can forbid it."""

from __future__ import annotations

import os
import re
import secrets
import stat
import threading
import time

import pytest

from tasks.settings import Settings
from web import auth, security

pytestmark = pytest.mark.integration

EVIL = "https://evil.example"


def _app(**overrides):
    from web import create_app

    app = create_app(Settings(**overrides))
    app.config["TESTING"] = True
    return app


@pytest.fixture
def secure_app(redis_server):
    return _app(auth_enabled=True)


def _tenant() -> str:
    return f"sec-{secrets.token_hex(4)}"


def _bearer(plaintext: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {plaintext}"}


def _hook_urls(client, headers=None) -> set[str]:
    return {w["url"] for w in client.get("/api/v1/webhooks", headers=headers).get_json()["webhooks"]}


def _refused(response, status: int, code: str) -> str:
    body = response.get_json()
    assert response.status_code == status, (response.status_code, response.get_data(as_text=True)[:300])
    assert set(body) == {"error"} and body["error"]["code"] == code
    return body["error"]["message"]


# --- 3. cross-site requests and DNS rebinding --------------------------------------------------

@pytest.mark.parametrize("headers", [
    {"Origin": EVIL},
    {"Origin": EVIL, "Sec-Fetch-Site": "cross-site"},
    {"Sec-Fetch-Site": "cross-site"},
    {"Sec-Fetch-Site": "same-site"},           # another origin of the same site
    {"Origin": "null"},                        # a sandboxed frame, a data: page
    {"Origin": "http://localhost:8000"},      # another port is another origin
], ids=["origin", "origin+fetch-site", "fetch-site", "same-site", "null", "other-port"])
def test_a_cross_site_form_post_to_the_api_is_refused_and_creates_nothing(client, headers):
    url = f"http://127.0.0.1:9/{secrets.token_hex(6)}"
    response = client.post("/api/v1/webhooks", data={"url": url}, headers=headers,
                           content_type="application/x-www-form-urlencoded")  # what a <form> on any page sends
    message = _refused(response, 403, "cross_site")
    assert "another site" in message and "curl" in message
    assert url not in _hook_urls(client)


def test_cross_site_posts_to_the_pages_and_with_auth_on_are_refused_too(client, secure_app):
    page = client.get("/settings/webhooks").get_data(as_text=True)
    token = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
    url = f"http://127.0.0.1:9/{secrets.token_hex(6)}"
    response = client.post("/settings/webhooks", data={"csrf_token": token, "url": url}, headers={"Origin": EVIL})
    _refused(response, 403, "cross_site")  # even with a valid CSRF token
    assert url not in _hook_urls(client)

    _, plaintext = secure_app.extensions["pixelmill"].tenants.create_key(tenant=_tenant(), admin=True)
    response = secure_app.test_client().post("/api/v1/jobs", headers={**_bearer(plaintext), "Origin": EVIL})
    _refused(response, 403, "cross_site")


def test_same_origin_browser_posts_and_clients_without_browser_headers_still_work(client):
    same_origin = {"Origin": "http://localhost", "Sec-Fetch-Site": "same-origin"}
    for headers in (same_origin, {}, {"Sec-Fetch-Site": "none"}):  # a page of ours; curl; a typed-in URL
        url = f"http://127.0.0.1:9/{secrets.token_hex(6)}"
        response = client.post("/api/v1/webhooks", json={"url": url}, headers=headers)
        assert response.status_code == 201, response.get_json()
        assert url in _hook_urls(client)
        assert client.delete(f"/api/v1/webhooks/{response.get_json()['id']}", headers=headers).status_code == 200
    # The default ports are the same origin as no port; GETs carry no check.
    https = client.post("/api/v1/webhooks", json={"url": "http://127.0.0.1:9/x"}, base_url="https://localhost:443",
                        headers={"Origin": "https://localhost"})
    assert https.status_code == 201
    client.delete(f"/api/v1/webhooks/{https.get_json()['id']}")
    assert client.get("/api/v1/webhooks", headers={"Origin": EVIL, "Sec-Fetch-Site": "cross-site"}).status_code == 200


@pytest.mark.parametrize("path", ["/healthz", "/", "/api/v1/jobs", "/api/v1/openapi.json", "/static/style.css",
                                  "/login", "/no-such-page"])
def test_a_foreign_host_is_refused_on_every_route(client, path):
    message = _refused(client.get(path, headers={"Host": "evil.example"}), 400, "untrusted_host")
    assert "'evil.example'" in message and "PIXELMILL_ALLOWED_HOSTS" in message
    assert client.get(path, headers={"Host": "localhost:8000"}).status_code != 400


def test_allowed_hosts_add_names_to_the_loopback_ones(redis_server):
    client = _app(allowed_hosts="pixelmill.example.com, .corp.example").test_client()
    for host in ("localhost", "127.0.0.1:8000", "[::1]:5000", "LOCALHOST.", "pixelmill.example.com",
                 "pixelmill.example.com:443", "corp.example", "a.b.corp.example"):
        assert client.get("/healthz", headers={"Host": host}).status_code == 200, host
    for host in ("evil.example", "localhost.evil.example", "pixelmill.example.com.evil.example", "xcorp.example",
                 "127.0.0.2", "localhost:80@evil.example", "[::2]"):
        assert client.get("/healthz", headers={"Host": host}).status_code == 400, host
    assert security.split_host("[::1]:8000") == ("[::1]", "8000")


# --- 5. sessions -----------------------------------------------------------------------------------

def _login(client, plaintext: str, *, next_path: str | None = None, **kwargs):
    client.get("/login", **kwargs)
    with client.session_transaction(**kwargs) as session:
        token = session["csrf"]
    url = "/login" + (f"?next={next_path}" if next_path is not None else "")
    return client.post(url, data={"api_key": plaintext, "csrf_token": token}, **kwargs)


def test_revoking_a_key_ends_its_sessions_at_once(secure_app):
    store, tenant = secure_app.extensions["pixelmill"].tenants, _tenant()
    key, plaintext = store.create_key(tenant=tenant)
    client = secure_app.test_client()
    assert _login(client, plaintext).status_code == 302
    with client.session_transaction() as session:
        assert session["key_id"] == key.id and session["tenant"] == tenant
    assert client.get("/gallery").status_code == 200
    store.revoke(tenant=tenant, key_id=key.id)
    response = client.get("/gallery")
    assert response.status_code == 302 and response.headers["Location"].startswith("/login")
    with client.session_transaction() as session:
        assert "tenant" not in session  # cleared, not just refused


@pytest.mark.parametrize(("next_path", "location"), [
    ("/%09/evil.example", "/"),      # a tab browsers drop: was Location: //evil.example
    ("/%0a/evil.example", "/"),
    ("//evil.example", "/"),
    ("/%5Cevil.example", "/"),      # a backslash browsers read as a slash
    ("%20//evil.example", "/"),
    ("https://evil.example/", "/"),
    ("evil.example", "/"),
    ("/gallery?limit=5", "/gallery?limit=5"),
    ("/", "/"),
])
def test_the_login_redirect_stays_on_the_site(secure_app, next_path, location):
    _, plaintext = secure_app.extensions["pixelmill"].tenants.create_key(tenant=_tenant())
    response = _login(secure_app.test_client(), plaintext, next_path=next_path.replace("?", "%3F"))
    assert response.status_code == 302 and response.headers["Location"] == location


def test_the_session_cookie_is_secure_over_https_and_lasts_the_set_lifetime(redis_server):
    app = _app(auth_enabled=True, session_lifetime_s=600)
    _, plaintext = app.extensions["pixelmill"].tenants.create_key(tenant=_tenant())
    for base_url, secure in (("http://localhost", False), ("https://localhost", True)):
        response = _login(app.test_client(), plaintext, base_url=base_url)
        cookie = response.headers["Set-Cookie"]
        assert ("; Secure" in cookie) is secure, cookie
        assert "HttpOnly" in cookie and "SameSite=Lax" in cookie
        expires = time.mktime(time.strptime(re.search(r"Expires=([^;]+)", cookie).group(1),
                                            "%a, %d %b %Y %H:%M:%S GMT")) - time.timezone
        assert 500 < expires - time.time() < 700
    forced = _app(auth_enabled=True, session_cookie_secure=True)
    assert "; Secure" in _login(forced.test_client(), plaintext).headers["Set-Cookie"]


def test_the_secret_file_is_0600_and_racing_processes_share_one_secret(tmp_path):
    secrets_seen: list[str] = []
    folders = [tmp_path / f"data-{i}" for i in range(20)]
    for folder in folders:  # many fresh folders, eight creators at once on each
        threads = [threading.Thread(target=lambda f=folder: secrets_seen.append(auth._persistent_secret(f)))
                   for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert stat.S_IMODE(os.stat(folder / "secret_key").st_mode) == 0o600
    for i, folder in enumerate(folders):
        assert set(secrets_seen[i * 8:(i + 1) * 8]) == {(folder / "secret_key").read_text()}

    # The loser of the race may find the winner's file still empty: it waits for the winner's secret.
    late = tmp_path / "late"
    late.mkdir()
    (late / "secret_key").touch(mode=0o600)
    writer = threading.Timer(0.3, lambda: (late / "secret_key").write_text("the-winners-secret"))
    writer.start()
    assert auth._persistent_secret(late) == "the-winners-secret"
    writer.join()
    # A file an older version left readable by others is restricted.
    old = tmp_path / "old"
    old.mkdir()
    (old / "secret_key").write_text("s" * 64)
    os.chmod(old / "secret_key", 0o644)
    assert auth._persistent_secret(old) == "s" * 64
    assert stat.S_IMODE(os.stat(old / "secret_key").st_mode) == 0o600


# --- 6. scoped keys ------------------------------------------------------------------------------

def test_only_an_admin_key_creates_keys_and_never_with_auth_off(client, secure_app):
    message = _refused(client.post("/api/v1/keys", json={"name": "x"}), 403, "forbidden")
    assert "pixelmill keys create" in message
    assert client.get("/api/v1/keys").status_code == 200  # listing stays

    store, tenant = secure_app.extensions["pixelmill"].tenants, _tenant()
    _, user = store.create_key(tenant=tenant)
    admin, admin_plaintext = store.create_key(tenant=tenant, admin=True)
    api = secure_app.test_client()
    message = _refused(api.post("/api/v1/keys", headers=_bearer(user), json={"name": "x"}), 403, "forbidden")
    assert "admin key" in message and "--admin" in message
    assert len(store.list_keys(tenant)) == 2

    created = api.post("/api/v1/keys", headers=_bearer(admin_plaintext), json={"name": "ci"})
    assert created.status_code == 201, created.get_json()
    body = created.get_json()
    assert body["admin"] is False and body["created_by"] == admin.id and body["tenant"] == tenant
    assert api.get("/api/v1/jobs", headers=_bearer(body["key"])).status_code == 200
    # A plain key revokes only itself; an admin key any of its tenant's.
    assert _refused(api.delete(f"/api/v1/keys/{admin.id}", headers=_bearer(body["key"])), 403, "forbidden")
    assert api.delete(f"/api/v1/keys/{body['id']}", headers=_bearer(body["key"])).status_code == 200


def test_a_key_never_outlives_the_key_that_created_it(secure_app):
    store, tenant = secure_app.extensions["pixelmill"].tenants, _tenant()
    admin, admin_plaintext = store.create_key(tenant=tenant, admin=True, expires_at=time.time() + 3600)
    api = secure_app.test_client()
    made = api.post("/api/v1/keys", headers=_bearer(admin_plaintext),
                    json={"name": "deputy", "admin": True, "expires_in_s": 30 * 86400}).get_json()
    assert made["expires_at"] == admin.expires_at  # capped at the creator's
    grandchild = api.post("/api/v1/keys", headers=_bearer(made["key"]), json={}).get_json()
    assert grandchild["created_by"] == made["id"] and grandchild["expires_at"] == admin.expires_at
    for plaintext in (made["key"], grandchild["key"]):
        assert api.get("/api/v1/jobs", headers=_bearer(plaintext)).status_code == 200

    store.revoke(tenant=tenant, key_id=admin.id)  # the keys it made, and theirs, die with it
    for plaintext in (made["key"], grandchild["key"]):
        assert api.get("/api/v1/jobs", headers=_bearer(plaintext)).status_code == 401

    _, expired = store.create_key(tenant=tenant, expires_at=time.time() - 1)
    assert api.get("/api/v1/jobs", headers=_bearer(expired)).status_code == 401


def test_the_cli_creates_admin_keys_that_expire(redis_server, capsys):
    from stack.cli import main
    from tasks.services import get_services

    tenant = _tenant()
    assert main(["keys", "create", "--tenant", tenant, "--admin", "--expires-in-days", "2"]) == 0
    assert "admin key id" in capsys.readouterr().out
    (key,) = get_services().tenants.list_keys(tenant)
    assert key.admin and key.created_by is None and 1.9 * 86400 < key.expires_at - time.time() <= 2 * 86400
    assert main(["keys", "list", "--tenant", tenant]) == 0
    assert "active admin expires" in capsys.readouterr().out


# --- 9. Content-Security-Policy without 'unsafe-inline' --------------------------------------------

INLINE = [
    (re.compile(r"<script(?![^>]*\bsrc=)[^>]*>", re.I), "an inline <script>"),
    (re.compile(r"<style\b", re.I), "a <style> element"),
    (re.compile(r"<[a-z][^>]*\sstyle\s*=", re.I), "a style= attribute"),  # in a tag (text may say style=…)
    (re.compile(r"<[a-z][^>]*\son[a-z]+\s*=", re.I), "an on…= handler"),
    (re.compile(r"<[a-z][^>]*=\s*[\"']?\s*javascript:", re.I), "a javascript: URL"),
]


def test_the_csp_forbids_inline_code_and_no_page_needs_any(client, secure_app):
    policy = client.get("/").headers["Content-Security-Policy"]
    directives = dict(d.strip().split(" ", 1) for d in policy.split(";"))
    assert "'unsafe-inline'" not in policy and "'unsafe-eval'" not in policy
    assert directives["script-src"] == "'self'" and directives["style-src"] == "'self'"
    assert directives["base-uri"] == "'none'" and directives["frame-ancestors"] == "'none'"
    assert directives["form-action"] == "'self'" and directives["object-src"] == "'none'"

    pages = {path: client.get(path) for path in ("/", "/gallery", "/settings/webhooks", "/dashboard", "/api/docs",
                                                 "/jobs/nope")}
    pages["/login"] = secure_app.test_client().get("/login")
    for path, response in pages.items():
        assert response.status_code in (200, 404) and response.mimetype == "text/html", path
        html = response.get_data(as_text=True)
        for pattern, what in INLINE:
            assert not pattern.search(html), f"{path} has {what}: {pattern.search(html).group(0)!r}"
    assert 'src="/static/index.js"' in pages["/"].get_data(as_text=True)
