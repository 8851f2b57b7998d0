"""A uContact simulator: campaigns and agents, dialer pool and schedules, blacklist, CDR, and
recordings filed as MP3 or GSM in the four places the document lists, with the converter."""

from __future__ import annotations

import base64
import binascii
import uuid
from datetime import datetime, timedelta
from importlib import resources
from typing import Any
from zoneinfo import ZoneInfo

from aiohttp import web

from pbxbridge.config import Account
from pbxbridge.vendors.operation import Operation
from pbxbridge.vendors.sim_audio import synth
from pbxbridge.vendors.simulator import SimError, SimulatorBase, Unauthorized
from pbxbridge.vendors.ucontact import operations as ops
from pbxbridge.vendors.ucontact.operations import DEFAULT_ZONE, VENDOR

USER = "integrations"
PASSWORD = "sim-ucontact-password"
MP3_GUID = "7e4e7db9-f080-494e-b04b-7c8e47711558"
GSM_GUID = "2b1c0d7e-0000-4000-8000-000000000002"
DAY = "20261120"
PAUSE_REASONS = ["Almuerzo", "Baño", "Capacitación"]


def gsm_sample() -> bytes:
    """A committed raw GSM 06.10 file (nothing here can encode GSM; see assets/README)."""
    return resources.files("pbxbridge.vendors.ucontact").joinpath("assets/sample.gsm").read_bytes()


def _campaign(name: str, strategy: str) -> dict[str, Any]:
    return {"campaign": name, "availables": 0, "notavailables": 0, "paused": 0, "busy": 0, "busypaused": 0,
            "totalagents": 0, "logged": 0, "onwrapup": 0, "completed": 0, "abandoned": 0, "talked": "00:00:00-0",
            "hold": "00:00:00-0", "abandonedlevel": "0", "totalcalls": 0, "acd": 0, "servicelevel": "0.0",
            "servicelevel2": "0.0", "strategy": strategy, "slevelthreshold": "15", "wrapup": 0}


class UContactSimulator(SimulatorBase):
    vendor = VENDOR
    base_path = "/"

    def __init__(self, *, user: str = USER, password: str = PASSWORD, zone: str = DEFAULT_ZONE, **kwargs: Any) -> None:
        self.user, self.password, self.zone = user, password, ZoneInfo(zone)
        super().__init__(**kwargs)

    def account(self, account_id: str = "sim", **options: Any) -> Account:
        """An account on this simulator, in the simulator's time zone unless told otherwise."""
        return super().account(account_id, **{"timezone": self.zone.key, **options})

    def now(self) -> datetime:
        """The server's wall clock: local time without a zone, as it writes it."""
        return datetime.now(self.zone).replace(tzinfo=None, microsecond=0)

    def seed_state(self) -> None:
        self.campaigns = {"test->": _campaign("test->", "fewestcalls"), "Power<-": _campaign("Power<-", "leastrecent"),
                          "Ventas->": _campaign("Ventas->", "ringall")}
        self.agents = {
            "SIP/1010": {"queue": "test->", "location": "SIP/1010", "membership": "", "name": "Daniel", "penalty": 0,
                         "callsTaken": 0, "lastCall": 0, "status": 5, "paused": False, "incall": 0, "pausedreason": "[]"},
            "SIP/1001": {"queue": "test->", "location": "SIP/1001", "membership": "", "name": "Santiago", "penalty": 0,
                         "callsTaken": 0, "lastCall": 0, "status": 1, "paused": False, "incall": 0, "pausedreason": ""},
            "SIP/1002": {"queue": "Power<-", "location": "SIP/1002", "membership": "", "name": "Lucia", "penalty": 0,
                         "callsTaken": 0, "lastCall": 0, "status": 1, "paused": False, "incall": 0, "pausedreason": ""},
        }
        self.agent_calls: dict[str, str] = {"1010": MP3_GUID}  # agent phone -> call in progress
        self.waiting: dict[str, list[datetime]] = {name: [] for name in self.campaigns}  # callers queued since
        self.cdr: list[dict[str, Any]] = []
        self.files: dict[str, bytes] = {}  # path on the recording servers -> audio
        self.blacklist: list[dict[str, Any]] = []
        self.pool: list[dict[str, Any]] = [{"campaign": "Ventas->", "destination": "098344484", "dialerbase": "basetest"}]
        self.schedules: list[dict[str, Any]] = [
            {"calldate": "2026-12-10 10:00:00", "campaign": "Ventas->", "destination": "098344484"}]
        self.tasks: list[dict[str, Any]] = []
        self.dispositions: list[dict[str, Any]] = []
        self.tags: dict[str, str] = {}
        self.uploads: list[dict[str, Any]] = []
        self.add_recorded_call(MP3_GUID, when=datetime(2026, 11, 20, 10, 0, 0), place=f"records/{DAY}")
        self.add_recorded_call(GSM_GUID, when=datetime(2026, 11, 20, 11, 0, 0), place=f"backup/records/{DAY}", gsm=True)
        self._refresh()

    def add_recorded_call(self, guid: str | None = None, *, when: datetime | None = None, place: str | None = None,
                          gsm: bool = False, campaign: str = "test->", duration: int = 2,
                          disposition: str = "ANSWERED", source: str = "59899123456", destination: str = "1001",
                          agent: str = "Santiago") -> str:
        """A finished call written to the CDR (``when`` it began, server local time), its recording
        filed at ``place`` (MP3, or GSM when ``gsm``) when it was answered."""
        guid = guid or str(uuid.UUID(int=self.random.getrandbits(128)))
        when = when or self.now() - timedelta(seconds=duration)
        place = place or f"records/{when:%Y%m%d}"
        if disposition == "ANSWERED":
            self.files[f"{place}/{guid}.{'gsm' if gsm else 'mp3'}"] = gsm_sample() if gsm else synth(2.0, "mp3", pitch=350)
        self.cdr.append({"guid": guid, "calldate": when.strftime("%Y-%m-%d %H:%M:%S"), "agent": agent,
                         "campaign": campaign, "source": source, "destination": destination, "duration": duration,
                         "disposition": disposition})
        return guid

    def _refresh(self) -> None:
        for name, c in self.campaigns.items():
            members = [a for a in self.agents.values() if a["queue"] == name]
            c["totalagents"] = len(members)
            c["availables"] = sum(1 for a in members if a["status"] == 1 and not a["paused"])
            c["notavailables"] = sum(1 for a in members if a["status"] in (0, 4, 5))
            c["paused"] = sum(1 for a in members if a["paused"])
            c["busy"] = sum(1 for a in members if a["status"] in (2, 3, 6, 7, 8))
            c["logged"] = len(members) - c["notavailables"]

    def step(self) -> None:
        """One round: agents change state (sometimes pausing), callers join and leave the queues,
        one call ends into the CDR with its recording in one of the four places."""
        pick = self.random.choice
        for agent in self.agents.values():
            agent["status"] = pick([1, 1, 2, 5, 6, 9])
            agent["paused"] = agent["status"] == 1 and self.random.random() < 0.25
            agent["pausedreason"] = f"[{pick(PAUSE_REASONS)}]" if agent["paused"] else "[]"
        now = self.now()
        for name, queued in self.waiting.items():
            if queued and self.random.random() < 0.5:
                queued.pop(0)  # answered, or gave up (counted below when the call ends)
            if self.random.random() < 0.5:
                queued.append(now)
        campaign = pick(list(self.campaigns))
        word = pick(["ANSWERED", "ANSWERED", "ANSWERED", "NO ANSWER", "BUSY", "FAILED"])
        duration = self.random.randint(5, 300) if word == "ANSWERED" else self.random.randint(0, 30)
        folder = f"{now - timedelta(seconds=duration):%Y%m%d}"
        place = pick(["records", f"records/{folder}", f"backup/records/{folder}", "backup/records"])
        inbound = campaign.endswith("<-")
        customer, agent_phone = f"5989{self.random.randint(1000000, 9999999)}", pick(["1001", "1010"])
        self.add_recorded_call(gsm=self.random.random() < 0.3, place=place, campaign=campaign, duration=duration,
                               disposition=word, agent=pick(["Santiago", "Daniel"]),
                               source=customer if inbound else agent_phone, destination=agent_phone if inbound else customer)
        stats = self.campaigns[campaign]
        stats["totalcalls"] += 1
        stats["completed" if word == "ANSWERED" else "abandoned"] += 1
        self._refresh()

    def state(self) -> dict[str, Any]:
        return {"campaigns": self.campaigns, "agents": self.agents, "cdr": self.cdr[-20:], "blacklist": self.blacklist,
                "pool": self.pool, "schedules": self.schedules, "files": sorted(self.files)}

    # ---- HTTP: envelope, auth, recording servers --------------------------------------

    def app(self) -> web.Application:
        app = super().app()
        app.router.add_get("/{place:(backup/)?records/.*}", self._recording_file)
        return app

    async def _recording_file(self, request: web.Request) -> web.StreamResponse:
        """The recording servers want the same session as the API (a 401 when it expired)."""
        try:
            self._check_session(request)
        except Unauthorized:
            self.requests.append(("recording", "error:auth"))
            return web.Response(status=401, text="Unauthorized")
        data = self.files.get(request.match_info["place"])
        self.requests.append(("recording", "ok" if data is not None else "error:404"))
        if data is None:
            return web.Response(status=404, text="Not Found")
        return web.Response(body=data, content_type="audio/mpeg" if request.path.endswith(".mp3") else "audio/x-gsm")

    def reply(self, op: Operation, payload: Any) -> web.StreamResponse:
        if isinstance(payload, str):
            return web.Response(text=payload, content_type="text/plain")
        return super().reply(op, payload)

    def error_reply(self, op: Operation | None, error: SimError) -> web.StreamResponse:
        if isinstance(error, Unauthorized):
            return web.Response(status=401, text="Unauthorized")
        if error.code == "zero":
            return web.Response(text="0", content_type="text/plain")
        return web.Response(status=400, text=error.message)

    def authenticate(self, op: Operation, request: web.Request, params: dict[str, Any]) -> None:
        if op.name != "getUserToken":
            self._check_session(request)

    def _check_session(self, request: web.Request) -> None:
        header = request.headers.get("Authorization", "")
        try:
            user, _, token = base64.b64decode(header.removeprefix("Basic ")).decode().partition(":")
        except (ValueError, binascii.Error):
            raise Unauthorized() from None
        if user != self.user or not self.token_valid(token):
            raise Unauthorized()

    def account_credentials(self) -> tuple[str | None, dict[str, str]]:
        return self.user, {"password": self.password}

    # ---- operations -------------------------------------------------------------------

    def getUserToken(self, req: ops.TokenRequest) -> str:
        if req.user != self.user or req.password.get_secret_value() != self.password:
            return "0"
        return f'"{self.issue_token()}"'

    def _call(self, req: ops.AgentCall) -> str:
        if req.outqueue not in self.campaigns:
            raise SimError("0", code="zero")
        guid = str(uuid.UUID(int=self.random.getrandbits(128)))
        self.agent_calls[req.phone] = guid
        return guid

    def AgentCall(self, req: ops.AgentCall) -> str:
        return self._call(req)

    def AgentCallwithData(self, req: ops.AgentCallWithData) -> str:
        return self._call(req)

    def HangupPhone(self, req: ops.HangupPhone) -> str:
        if self.agent_calls.pop(req.phone, None) is None:
            raise SimError("0", code="zero")
        return "1"

    def DispositionCall(self, req: ops.DispositionCall) -> dict:
        if req.campaign not in self.campaigns:
            raise SimError(f"Disposition not found for level1: {req.l1}, level2: {req.l2} level3: {req.l3}")
        self.dispositions.append(req.model_dump(exclude_none=True))
        if req.schedule:
            self.schedules.append({"calldate": req.schedule, "campaign": req.camptoreschedule or req.campaign,
                                   "destination": req.callerid or ""})
        return {"Result": "ok", "txtcode": f"{req.l1}|{req.l2 or ''}|{req.l3 or ''}"}

    def addblack(self, req: ops.AddBlack) -> str:
        self.blacklist.append(req.black.model_dump(exclude_none=True))
        return "1"

    def getrecords(self, req: ops.GetRecords) -> list:
        f = req.filter
        rows = [r for r in self.cdr if f.calldatei <= r["calldate"] <= f.calldatef
                and (not f.campaign or r["campaign"] == f.campaign) and (not f.agent or r["agent"] == f.agent)]
        return rows[req.lastrow : req.lastrow + req.searchLimit]

    def convert(self, req: ops.Convert) -> str:
        for place in (f"records/{req.folder}", "records", f"backup/records/{req.folder}", "backup/records"):
            if f"{place}/{req.guid}.gsm" in self.files:
                self.files[f"records/{req.folder or ''}/{req.guid}.mp3".replace("//", "/")] = synth(2.0, "mp3", pitch=350)
                return "1"
        raise SimError("0", code="zero")

    def TagRecord(self, req: ops.TagRecord) -> str:
        self.tags[req.guid] = req.data
        return ""

    def Respool(self, req: ops.RespoolRequest) -> str:
        self.pool.append(req.callspool.model_dump(exclude_none=True))
        return "1"

    def ScheduleDialerCall(self, req: ops.ScheduleDialerCall) -> str:
        if req.callschedule.campaign not in self.campaigns:
            raise SimError("0", code="zero")
        self.schedules.append(req.callschedule.model_dump(exclude_none=True))
        return "1"

    def DialerTask(self, req: ops.DialerTask) -> str:
        self.tasks.append(req.call.model_dump())
        return "1"

    def RemoveContact(self, req: ops.RemoveContact) -> str:
        self.pool = [p for p in self.pool if not (p["campaign"] == req.campaign and p["destination"] == req.number)]
        return "1"

    def RemoveScheduleDialerCall(self, req: ops.RemoveScheduleDialerCall) -> str:
        self.schedules = [s for s in self.schedules if not (
            s["campaign"] == req.campaign and s["destination"] == req.destination and req.from_ <= s["calldate"] <= req.to)]
        return "1"

    def uploadbase(self, req: ops.UploadBase) -> str:
        self.uploads.append(req.model_dump())
        return "1"

    def uploadbasewithtimezone(self, req: ops.UploadBaseWithTimezone) -> str:
        return self.uploadbase(req)

    def queuesummary(self, req: ops.NoParams) -> list:
        now = self.now()
        stamp = now.strftime("%b %d, %Y %I:%M:%S %p")
        rows = [{"queue": n, "loggedIn": c["logged"], "available": c["availables"], "callers": len(self.waiting[n]),
                 "holdTime": 0, "talkTime": 0,
                 "longestHoldTime": int((now - self.waiting[n][0]).total_seconds()) if self.waiting[n] else 0,
                 "internalActionId": "1_1", "dateReceived": stamp}
                for n, c in self.campaigns.items()]
        return rows + [{"internalActionId": "1_1", "dateReceived": stamp}]

    def campaignstatus(self, req: ops.CampaignStatusRequest) -> dict:
        self._refresh()
        if not req.queue:
            return dict(self.campaigns)
        if req.queue not in self.campaigns:
            raise SimError(f"campaign {req.queue} not found")
        agents = {k: a for k, a in self.agents.items() if a["queue"] == req.queue}
        return {req.queue: self.campaigns[req.queue], **agents}
