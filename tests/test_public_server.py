"""Public mode and login against a real server, with several clients: one that reconnects (a new session,
and a forged X-Forwarded-For entry), one that copies another's session hash, and one from elsewhere.

Clients connect over loopback; ``GPTAILOR_PROXY_HOPS=1`` makes the app read each one's address from the
X-Forwarded-For entry a proxy would append, which each client here sets as that proxy would."""
import re

import pytest

from test_app import free_port, start_app, stop_app

A, B, D = "203.0.113.5", "198.51.100.7", "192.0.2.1"  # three visitors' addresses as the proxy sees them
FORM = ("demo", "random", 2, 1, None, 0, 4, 8)  # family, method, remove, trials, wall time, seed, fidelities


@pytest.fixture(scope="module")
def spaces(tmp_path_factory):
    proc, url, data = start_app(tmp_path_factory, GPTAILOR_PUBLIC="1", GPTAILOR_PROXY_HOPS="1",
                                GPTAILOR_CLIENT_MAX_STUDIES="2", GPTAILOR_MAX_STUDIES_PER_HOUR="3",
                                GPTAILOR_MAX_WORKERS="1", GPTAILOR_MAX_TRIALS="2")
    yield url, data
    stop_app(proc)


def visitor(url: str, forwarded: str):
    from gradio_client import Client

    return Client(url, verbose=False, headers={"X-Forwarded-For": forwarded})


def launch(client, name: str, token):
    return client.predict(*FORM, name, "layers to remove", 0.8, None, token, api_name="/launch_study")


def test_caps_and_ownership_hold_whatever_session_a_client_uses(spaces):
    from db.store import ACTIVE, Store

    url, data = spaces
    a = visitor(url, A)
    token_a = a.predict(None, api_name="/owner_token")
    _m, _r, s1 = launch(a, "a-1", token_a)
    msg, _r, s2 = launch(a, "a-2", token_a)
    assert "queued (#1 in line)" in msg  # the global worker cap: one at a time, whoever asks

    # a reconnect: a new session and a new token, and a forged entry left of the proxy's one
    again = visitor(url, f"1.1.1.1, {A}")
    assert again.session_hash != a.session_hash
    token_new = again.predict(None, api_name="/owner_token")
    assert token_new != token_a
    with pytest.raises(Exception, match="this address already made 2 studies in the last 24 hours"):
        launch(again, "a-3", token_new)
    with pytest.raises(Exception, match=f"study {int(s1)} was started by another visitor"):
        again.predict(int(s1), "reconnected", token_new, api_name="/rename_study")
    # a reload of the same browser keeps its token (localStorage), and with it the studies
    note, _p, _q = again.predict(int(s1), "a-first", token_a, api_name="/rename_study")
    assert f"study {int(s1)} is now named **a-first**" in note

    # a client elsewhere that copies the owner's session hash gains nothing from it
    copier = visitor(url, B)
    copier.session_hash = a.session_hash
    token_c = copier.predict(None, api_name="/owner_token")
    assert token_c not in (token_a, token_new)
    nonce, _sig = token_a.split(".")
    for token in (None, token_c, f"{nonce}.forged", "made-up"):
        with pytest.raises(Exception, match="started by another visitor"):
            copier.predict(int(s2), token, api_name="/cancel_study")
        with pytest.raises(Exception, match="started by another visitor"):
            copier.predict(int(s2), "renamed", token, api_name="/rename_study")
    with pytest.raises(Exception, match="holds no owner token from this app"):
        launch(copier, "c-0", f"{nonce}.forged")
    _m, _r, s3 = launch(copier, "c-1", token_c)  # its own address has its own allowance

    # the app's hourly cap (3) holds for everyone, whatever their address
    with pytest.raises(Exception, match="this app already started 3 studies in the last hour"):
        launch(visitor(url, D), "d-1", visitor(url, D).predict(None, api_name="/owner_token"))

    st = Store(f"sqlite:///{data / 'gptailor.db'}")
    studies = {s["id"]: s for s in st.studies()}
    assert sorted(studies) == sorted(int(s) for s in (s1, s2, s3)) and studies[int(s1)]["name"] == "a-first"
    assert sum(s["status"] in ACTIVE for s in studies.values()) <= 1  # never two workers at once
    assert len({studies[int(s)]["client_key"] for s in (s1, s2)}) == 1 != len({studies[int(s1)]["client_key"],
                                                                                studies[int(s3)]["client_key"]})
    note, _rows = a.predict(int(s2), token_a, api_name="/cancel_study")  # its owner may
    assert f"Study {int(s2)}: cancelled" in note
    # a cancelled study is resumable, but only by its owner: the copier's and forged tokens change nothing
    before = {k: v for k, v in st.study(int(s2)).items() if k != "trials"}
    assert before["status"] == "cancelled"
    for client, token in ((copier, None), (copier, token_c), (copier, f"{nonce}.forged"), (again, token_new)):
        with pytest.raises(Exception, match=f"study {int(s2)} was started by another visitor; you can resume"):
            client.predict(int(s2), token, api_name="/resume_study")
    assert {k: v for k, v in st.study(int(s2)).items() if k != "trials"} == before
    for client, token, sid in ((a, token_a, s1), (copier, token_c, s3)):  # leave no worker running
        try:
            client.predict(int(sid), token, api_name="/cancel_study")
        except Exception as e:  # it may have finished its one trial already
            assert "nothing to cancel" in str(e)


def routes(found):
    """Every route of the app, the ones of included routers (Gradio's /gradio_api) too."""
    for route in found:
        if hasattr(route, "original_router"):
            yield from routes(route.original_router.routes)
        else:
            yield route


def test_with_login_every_endpoint_but_the_login_forms_asks_for_it(tmp_path, monkeypatch):
    """Every route of the real app, called without the login cookie, answers 401, except the short list the
    login form needs (ui/login.py); logged in, the session endpoints Gradio left open answer again."""
    import httpx
    from gradio_client import Client

    from ui.app import build_app, launch_options
    from ui.guard import valid_token
    from ui.login import is_open

    monkeypatch.setenv("GPTAILOR_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("GPTAILOR_AUTH", "op:secret")
    port = free_port()
    demo = build_app().queue()
    demo.launch(server_port=port, prevent_thread_lock=True, **launch_options())
    url = f"http://127.0.0.1:{port}"
    try:
        checked, open_paths = [], set()
        with httpx.Client(base_url=url, timeout=60) as anon:  # a hang guard only: a refusal is immediate
            for route in routes(demo.app.routes):
                path = re.sub(r"\{[^}]*\}", "x", getattr(route, "path", ""))
                if not path or not getattr(route, "methods", None):
                    continue
                if is_open(path):
                    open_paths.add(path)
                    continue
                for method in sorted(route.methods - {"HEAD", "OPTIONS"}):
                    r = anon.request(method, path, json={})
                    checked.append((method, path, r.status_code))
        assert len(checked) > 50 and [c for c in checked if c[2] != 401] == []
        for must in ("/gradio_api/reset", "/gradio_api/cancel", "/gradio_api/heartbeat/x", "/gradio_api/stream/x",
                     "/gradio_api/queue/join", "/gradio_api/upload", "/config"):
            assert any(p == must for _m, p, _s in checked), must
        assert open_paths <= {"/", "/login", "/login/", "/logout", "/logout/", "/favicon.ico", "/manifest.json",
                              "/robots.txt", "/theme.css", "/gradio_api/theme.css", "/gradio_api/login_check",
                              "/gradio_api/login_check/", "/gradio_api/user", "/gradio_api/user/", "/gradio_api/token",
                              "/gradio_api/token/", "/gradio_api/app_id", "/gradio_api/app_id/",
                              "/gradio_api/startup-events"} | {p for p in open_paths if p.startswith(
                                  ("/assets/", "/static/", "/svelte/", "/pwa_icon"))}
        with httpx.Client(base_url=url, timeout=60) as user:
            assert user.post("/login", data={"username": "op", "password": "wrong"}).status_code == 400
            assert user.post("/gradio_api/reset", json={"event_id": "x"}).status_code == 401
            assert user.post("/login", data={"username": "op", "password": "secret"}).status_code == 200
            assert user.post("/gradio_api/reset", json={"event_id": "x"}).status_code == 200
            with user.stream("GET", "/gradio_api/heartbeat/some-session") as beat:
                assert beat.status_code == 200
        assert valid_token(Client(url + "/", auth=("op", "secret"), verbose=False).predict(None, api_name="/owner_token"))
    finally:
        demo.close()
