"""A SWAN v2 simulator: users and their status, queues, calls whose recordings are
``processing`` at first and real MP3 later, agendas, terminals, company numbers.

It lives on its own: every ``activity_interval`` seconds (or at ``POST /_sim/tick``) calls end
(into last-calls, recording processing) and start (current-calls), a user changes status, queues
fill and drain, and a terminal may register or unregister (which logs its user on or off the
queues). The PBX clock is the wall clock plus ``clock_offset``: ``advance`` ages calls in progress
and readies recordings without waiting."""

from __future__ import annotations

import itertools
from datetime import datetime, timedelta
from typing import Any

from aiohttp import web

from pbxbridge.vendors.operation import Operation
from pbxbridge.vendors.sim_audio import synth
from pbxbridge.vendors.simulator import SimError, SimulatorBase, Unauthorized
from pbxbridge.vendors.swan import operations as ops
from pbxbridge.vendors.swan.operations import DEFAULT_ZONE, VENDOR

API_KEY = "sim-swan-api-key"
COMPANY = "acme"
NUMBERS = ["34600111222", "34600333444", "34911555666"]
_DESCRIPTIONS = {"available": "Disponible", "unavailable": "No disponible", "busy": "Ocupado", "ringing": "Sonando",
                 "pause": "Descanso"}


class SwanSimulator(SimulatorBase):
    vendor = VENDOR
    base_path = "/"
    processing_seconds = 2.0  # a recording stays "processing" this long after its call ends (PBX clock: see advance)

    def __init__(self, *, api_key: str = API_KEY, **kwargs: Any) -> None:
        self.api_key = api_key
        super().__init__(**kwargs)

    def seed_state(self) -> None:
        self._seq = itertools.count(1)
        self.clock_offset = timedelta(0)  # ``advance`` moves the PBX's clock: calls age without waiting
        self.users = {
            ext: {"extension": ext, "id": str(i), "name": name, "status": "available", "description": "Disponible",
                  "mobile": f"3460000{ext}", "department": dept, "mac": f"00:15:65:aa:bb:{i:02d}", "registered": True}
            for i, (ext, name, dept) in enumerate(
                [("200", "Ana", "ventas"), ("201", "Luis", "ventas"), ("202", "Marta", "soporte")], start=1)
        }
        self.queues = {q: {"members": ["200", "201"], "waiting": 1, "completed": 12, "abandoned": 2, "ring": [8, 15, 25]}
                       for q in ("q100", "q101")}
        self.calls: list[dict[str, Any]] = []  # finished calls, newest last
        self.current: dict[str, list[dict[str, Any]]] = {}  # extension -> calls in progress, newest last
        self.recordings: dict[str, dict[str, Any]] = {}  # call id -> {ready_at, seconds, parties}
        self.agendas: dict[str, dict[str, str]] = {"clientes": {"34600111222": "Cliente 1"}}
        self.numbers = [
            {"id": "1", "name": "primari - 937060370", "alias": "ONFARMA", "value": "937060370", "in_use": True},
            {"id": "2", "name": "secundari - 937060371", "alias": "RESERVA", "value": "937060371", "in_use": False},
        ]
        # The document: web-phone-username "returns an error if the user cannot login because
        # terminal is already registered". Off by default (the reply's is_registered says it too).
        self.refuse_registered = False
        self.add_call("200", call_id="1700000001.1", ready=True)
        self.add_call("201", ready=False)
        self.start_call("201", call_id="1700000009.1", number="34600333444", direction="incoming")

    def account(self, account_id: str = "sim", **options: Any) -> Any:
        """As the base, plus what SWAN feeds need to know and cannot discover: the company
        (``blf-users``) and the queue groups (``queues-status``)."""
        defaults = {"company": COMPANY, "queues": {"ventas": ["q100"], "soporte": ["q101"]}}
        return super().account(account_id, **{**defaults, **options})

    # ---- activity ---------------------------------------------------------------------

    def now(self) -> datetime:
        return datetime.now(DEFAULT_ZONE) + self.clock_offset

    def advance(self, seconds: float) -> None:
        """The PBX's clock moves on: calls in progress last longer."""
        self.clock_offset += timedelta(seconds=seconds)

    @staticmethod
    def _calldate(when: datetime) -> str:
        return when.astimezone(DEFAULT_ZONE).strftime("%Y-%m-%d %H:%M:%S")

    def _call_id(self) -> str:
        return f"{1700000100 + next(self._seq)}.1"

    def start_call(self, extension: str, *, call_id: str | None = None, number: str | None = None,
                   direction: str | None = None) -> str:
        """A call of ``extension`` in progress: listed by current-calls until ``end_call``."""
        call_id = call_id or self._call_id()
        self.current.setdefault(extension, []).append({
            "uniqueid": call_id, "started": self.now(), "number": number or self.random.choice(NUMBERS),
            "direction": direction or self.random.choice(["incoming", "outgoing"]),
        })
        return call_id

    def end_call(self, call_id: str, *, duration: int | None = None) -> None:
        """The call leaves current-calls for last-calls; its recording is ``processing`` a while."""
        for extension, calls in self.current.items():
            for call in calls:
                if call["uniqueid"] == call_id:
                    calls.remove(call)
                    seconds = duration if duration is not None else self._elapsed(call)
                    self._finish(extension, call_id, call["started"], call["number"], call["direction"], seconds)
                    return
        raise KeyError(call_id)

    def add_call(self, extension: str, *, call_id: str | None = None, seconds: float = 3.0, ready: bool = False,
                 when: datetime | None = None) -> str:
        """A finished call of ``extension`` with a recording, ``processing`` until it is ready."""
        call_id = call_id or self._call_id()
        self._finish(extension, call_id, when or self.now(), self.random.choice(NUMBERS),
                     self.random.choice(["incoming", "outgoing"]), int(seconds), ready=ready)
        return call_id

    def _finish(self, extension: str, call_id: str, started: datetime, number: str, direction: str, seconds: int,
                *, ready: bool = False) -> None:
        self.calls.append({"uniqueid": call_id, "calldate": self._calldate(started), "duration": int(seconds),
                           "number": number, "direction": direction, "extension": extension})
        ready_at = 0.0 if ready else self.now().timestamp() + self.processing_seconds
        self.recordings[call_id] = {"ready_at": ready_at, "seconds": max(1.0, float(seconds)), "parties": {extension}}

    def _elapsed(self, call: dict[str, Any]) -> int:
        return int((self.now() - call["started"]).total_seconds())

    def finish_processing(self) -> None:
        for rec in self.recordings.values():
            rec["ready_at"] = 0.0

    def step(self) -> None:
        """One round of life: calls end and start, a user changes status, queues fill and drain,
        a terminal registers or unregisters."""
        pick = self.random
        for extension, calls in list(self.current.items()):
            for call in list(calls):
                if self._elapsed(call) >= 3 and pick.random() < 0.5:  # a call lasts a few seconds at least
                    self.end_call(call["uniqueid"])
        if sum(map(len, self.current.values())) < 2:
            self.start_call(pick.choice(list(self.users)))
        user = self.users[pick.choice(list(self.users))]
        user["status"] = pick.choice(["available", "unavailable", "busy", "ringing", "pause"])
        user["description"] = _DESCRIPTIONS[user["status"]]
        for q in self.queues.values():
            move = pick.choice([-1, 0, 1])
            if move < 0 and q["waiting"]:
                q["completed" if pick.random() < 0.8 else "abandoned"] += 1
            q["waiting"] = max(0, min(5, q["waiting"] + move))
        if pick.random() < 0.5:
            terminal = self.users[pick.choice(list(self.users))]
            terminal["registered"] = not terminal["registered"]

    def state(self) -> dict[str, Any]:
        return {"users": self.users, "calls": self.calls[-20:], "current": self.current, "agendas": self.agendas,
                "queues": self.queues}

    # ---- envelope and auth ------------------------------------------------------------

    def app(self) -> web.Application:
        app = super().app()
        app.router.add_get("/recordings/{call_id}.mp3", self._recording_file)
        return app

    async def _recording_file(self, request: web.Request) -> web.StreamResponse:
        if request.headers.get("X-API-Key") != self.api_key:
            return web.json_response({"error": True, "error-msg": "unauthorized", "result": None}, status=401)
        rec = self.recordings.get(request.match_info["call_id"])
        if rec is None or rec["ready_at"] > self.now().timestamp():
            return web.Response(status=404, text="no such recording")
        return web.Response(body=synth(rec["seconds"], "mp3"), content_type="audio/mpeg")

    def reply(self, op: Operation, payload: Any) -> web.StreamResponse:
        if isinstance(payload, web.StreamResponse):
            return payload  # a handler answering in its own shape
        return super().reply(op, {"error": False, "error-msg": None, "result": payload})

    def error_reply(self, op: Operation | None, error: SimError) -> web.StreamResponse:
        status = 401 if isinstance(error, Unauthorized) else 200  # SWAN reports errors in the envelope
        return web.json_response({"error": True, "error-msg": error.message, "result": None}, status=status)

    def authenticate(self, op: Operation, request: web.Request, params: dict[str, Any]) -> None:
        if request.headers.get("X-API-Key") != self.api_key:
            raise Unauthorized("invalid API key")

    def account_credentials(self) -> tuple[str | None, dict[str, str]]:
        return None, {"api_key": self.api_key}

    # ---- helpers ----------------------------------------------------------------------

    def _user(self, extension: str) -> dict[str, Any]:
        if extension not in self.users:
            raise SimError(f"extension {extension} not found")
        return self.users[extension]

    def _company(self, company: str) -> None:
        if company != COMPANY:
            raise SimError(f"company {company} not found")

    @staticmethod
    def _public(user: dict[str, Any], *, mobile: bool = False) -> dict[str, Any]:
        keys = ["extension", "id", "name", "status", "description"] + (["mobile"] if mobile else [])
        return {k: user[k] for k in keys}

    def _queue_stats(self, names: list[str]) -> dict[str, Any]:
        qs = [self.queues[n] for n in names if n in self.queues]
        completed = sum(q["completed"] for q in qs)
        abandoned = sum(q["abandoned"] for q in qs)
        rings = [r for q in qs for r in q["ring"]] or [0]
        avg, top = sum(rings) / len(rings), max(rings)
        ok = sum(1 for r in rings if r < 20)
        return {
            # terminal-register logs a user on (and off) all its queues
            "members": sorted({m for q in qs for m in q["members"] if self.users[m]["registered"]}),
            "alarm": abandoned > completed / 4,
            "status": {
                "abandoned": abandoned, "abandonedRatio": 100 - (abandoned * 100 / max(1, completed + abandoned)),
                "avgRingTime": avg, "avgRingTimeRatio": avg * 100 / max(1, top), "completed": completed,
                "currentCalls": sum(q["waiting"] for q in qs), "maxRingTime": top, "ringTimeOK": ok,
                "serviceRatio": ok * 100 / max(1, completed),
            },
        }

    # ---- operations -------------------------------------------------------------------

    def getUserStatus(self, req: ops.Extension) -> dict:
        return self._public(self._user(req.extension))

    def setUserStatus(self, req: ops.SetUserStatus) -> dict:
        user = self._user(req.extension)
        user["status"] = req.status
        user["description"] = req.reason or {"available": "Disponible", "busy": "Ocupado", "pause": "Pausa"}[req.status]
        return self._public(user)

    def listBlfUsers(self, req: ops.BlfQuery) -> list:
        self._company(req.company)
        users = [u for u in self.users.values() if not req.departments or u["department"] in req.departments]
        return [self._public(u, mobile=bool(req.withMobile)) for u in users]

    def getQueuesStatus(self, req: ops.QueuesQuery) -> dict:
        return {"queues": {group: self._queue_stats(names) for group, names in req.queues.items()}}

    def getUsername(self, req: ops.Extension) -> dict:
        user = self.users.get(req.extension)
        return {"username": user["name"] if user else None}

    def getWebPhoneUsername(self, req: ops.Extension) -> dict:
        user = self._user(req.extension)
        if user["registered"] and self.refuse_registered:
            raise SimError("terminal already registered")
        return {"username": user["mac"], "is_registered": user["registered"]}

    def unregisterUser(self, req: ops.Extension) -> dict:
        self._user(req.extension)["registered"] = False
        return {"success": True}

    def getUserResume(self, req: ops.UserResumeQuery) -> dict:
        self._company(req.company)
        self._user(req.extension)
        mine = [c for c in self.calls if c["extension"] == req.extension]
        seconds = sum(c["duration"] for c in mine)
        speech = f"{seconds // 60:02d} minutos {seconds % 60:02d} segundos"
        result: dict[str, Any] = {"waiting-calls": {g: sum(self.queues[q]["waiting"] for q in qs if q in self.queues)
                                                    for g, qs in (req.queues or {}).items()}}
        if req.department:
            team = [c for c in self.calls if self.users[c["extension"]]["department"] == req.department]
            result["queue"] = {"completed": len(team), "abandoned": 0,
                               "totalSpeechTime": f"{sum(c['duration'] for c in team) // 60:02d} minutos 00 segundos"}
            share = 100 * len(mine) / max(1, len(team))
            result["user"] = {"completed": len(mine), "totalSpeechTime": speech,
                              "lastCall": mine[-1]["number"] if mine else None,
                              "stats_complete": {"percentage": share, "state": 3}, "stats_time": {"percentage": share, "state": 3}}
        return result

    def listLastCalls(self, req: ops.LastCallsQuery) -> list:
        self._user(req.extension)
        oldest = self._calldate(self.now() - timedelta(hours=req.hours or 24))  # same format: compares as text
        return [{k: c[k] for k in ("uniqueid", "calldate", "duration", "number", "direction")}
                for c in reversed(self.calls) if c["extension"] == req.extension and c["calldate"] >= oldest]

    def listCurrentCalls(self, req: ops.Extension) -> list:
        self._user(req.extension)
        return [{"uniqueid": c["uniqueid"], "calldate": self._calldate(c["started"]), "duration": self._elapsed(c),
                 "number": c["number"], "direction": c["direction"]} for c in reversed(self.current.get(req.extension, []))]

    def getRecording(self, req: ops.RecordingQuery) -> dict:
        self._user(req.extension)
        rec = self.recordings.get(req.callID)
        if rec is None:
            raise SimError(f"call {req.callID} not found")
        if rec["ready_at"] > self.now().timestamp():
            return {"processing": True}
        url = f"{self.url}recordings/{req.callID}.mp3"
        return {"processing": False, "path": url} if req.extension in rec["parties"] else {"processing": False, "link": url}

    def placeCall(self, req: ops.PlaceCall) -> dict:
        self._company(req.company)
        self._user(req.private_source)
        self.start_call(req.private_source, number=req.destination, direction="outgoing")
        return {"success": True}

    def deleteAgendaPhones(self, req: ops.DeleteAgendaPhones) -> dict:
        agenda = self.agendas.get(req.name)
        if agenda is None:
            raise SimError(f"agenda {req.name} not found")
        for number in req.phones if req.phones is not None else list(agenda):
            agenda.pop(number, None)
        return {"success": True}

    def updateAgenda(self, req: ops.UpdateAgenda) -> dict:
        agenda = self.agendas.setdefault(req.name, {})
        for phone in req.phones:
            agenda[phone.number] = phone.name
        return {"success": True}

    def _by_mac(self, mac: str) -> dict[str, Any]:
        for user in self.users.values():
            if user["mac"].lower() == mac.lower():
                return user
        raise SimError(f"terminal {mac} not found")

    def registerTerminal(self, req: ops.Mac) -> dict:
        self._by_mac(req.mac)["registered"] = True
        return {"success": True}

    def unregisterTerminal(self, req: ops.Mac) -> dict:
        self._by_mac(req.mac)["registered"] = False
        return {"success": True}

    def listCompanyNumbers(self, req: ops.CompanyNumbersQuery) -> list:
        self._company(req.company)
        return [{k: n[k] for k in ("id", "name", "alias", "value")} for n in self.numbers if not req.in_use or n["in_use"]]
