"""Shared benchmark plumbing: where things live, the bench database, the production-like
environment for the real app, and the synthetic people every script draws from.

Nothing here is imported by the application. Secrets and the keyring live in a scratch
folder outside the repository (BENCH_WORKDIR, default /tmp/referral_bench); figures and
profiles go to bench/results/ (git-ignored).
"""

from __future__ import annotations

import json
import os
import random
import secrets
import threading
import uuid
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
VENV_BIN = REPO / ".venv" / "bin"
RESULTS = Path(os.environ.get("BENCH_RESULTS", BENCH_DIR / "results"))
WORKDIR = Path(os.environ.get("BENCH_WORKDIR", "/tmp/referral_bench"))  # noqa: S108

# The PostgreSQL server (trust auth on loopback); the bench creates its own database in it.
SERVER_URL = os.environ.get("BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
DB_NAME = os.environ.get("BENCH_DB", "referral_bench")

ORG_NAME = "Bench NGO"
USER_EMAIL = "bench-caseworker@bench-ngo.example"
USER_PASSWORD = "bench-password-not-secret"
SEED = 20260101


def db_url(name: str = DB_NAME) -> str:
    """SQLAlchemy URL of a database in the bench server (psycopg 3)."""
    from sqlalchemy.engine import make_url

    from referral_api.settings import normalise_database_url

    base = make_url(normalise_database_url(SERVER_URL))
    return base.set(database=name).render_as_string(hide_password=False)


def admin_engine() -> Any:
    from sqlalchemy import create_engine

    from referral_api.settings import normalise_database_url

    return create_engine(normalise_database_url(SERVER_URL), isolation_level="AUTOCOMMIT")


def database_exists(name: str = DB_NAME) -> bool:
    from sqlalchemy import text

    engine = admin_engine()
    try:
        with engine.connect() as connection:
            return bool(
                connection.execute(
                    text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name}
                ).scalar()
            )
    finally:
        engine.dispose()


def create_database(name: str = DB_NAME) -> None:
    from sqlalchemy import text

    engine = admin_engine()
    try:
        with engine.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
    finally:
        engine.dispose()


def drop_database(name: str = DB_NAME) -> None:
    from sqlalchemy import text

    engine = admin_engine()
    try:
        with engine.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        engine.dispose()


def run_split(
    url: str, sql: str, params: dict[str, Any], n: int, workers: int, triggers: bool = True
) -> None:
    """One INSERT … SELECT per slice of 1..n (`:lo`, `:hi`), the slices in parallel, each a
    transaction of its own (without durable commit; `triggers` off: as a superuser may)."""
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    errors: list[BaseException] = []

    def work(lo: int, hi: int) -> None:
        try:
            with engine.begin() as connection:
                connection.exec_driver_sql("SET LOCAL synchronous_commit = off")
                if not triggers:
                    connection.exec_driver_sql("SET LOCAL session_replication_role = replica")
                connection.execute(text(sql), {**params, "lo": lo, "hi": hi})
        except BaseException as exc:  # noqa: BLE001 - re-raised in the main thread
            errors.append(exc)

    step = -(-n // workers)
    threads = [
        threading.Thread(target=work, args=(lo, min(lo + step - 1, n)))
        for lo in range(1, n + 1, step)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    engine.dispose()
    if errors:
        raise errors[0]


# ---- the real app's environment ----------------------------------------------------------


def _secret_file(name: str) -> str:
    path = WORKDIR / name
    if not path.exists():
        WORKDIR.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as handle:
            handle.write(secrets.token_urlsafe(48))
    return path.read_text(encoding="ascii").strip()


def keyring_path(name: str = "keyring.json") -> Path:
    """A root keyring for the bench (mode 0600, outside the repository), created once."""
    path = WORKDIR / name
    if not path.exists():
        import logging

        from referral_api.crypto.keyring import LocalKeyring

        WORKDIR.mkdir(parents=True, exist_ok=True, mode=0o700)
        quiet = logging.getLogger("referral_api.crypto.keyring")  # "development only" warning
        quiet.disabled = True
        try:
            LocalKeyring.load(path, create_if_missing=True)
        finally:
            quiet.disabled = False
    return path


def app_env(database: str = DB_NAME, keyring: str = "keyring.json") -> dict[str, str]:
    """Production-mode environment for the real app (gunicorn or in-process)."""
    return {
        "REFERRAL_API_ENV": "production",
        "DATABASE_URL": db_url(database),
        "REFERRAL_API_JWT_SECRET": _secret_file("jwt-secret"),
        "REFERRAL_API_KEYRING": str(keyring_path(keyring)),
        # Password hashing cost does not matter here (one login per run): the cheapest
        # production accepts.
        "REFERRAL_API_ARGON2_TIME_COST": "2",
        "REFERRAL_API_ARGON2_MEMORY_KIB": str(19 * 1024),
        "REFERRAL_API_ARGON2_PARALLELISM": "1",
    }


def make_app(**env: str) -> Any:
    """The real app, exactly as gunicorn builds it (`referral_api:create_app()`)."""
    os.environ.update(app_env(**env))
    from referral_api import create_app

    return create_app()


def quiet_app_logs() -> None:
    """The app logs one JSON line per request on stderr: keep in-process runs readable."""
    import logging

    logging.getLogger("referral_api").setLevel(logging.WARNING)


# ---- bench principals --------------------------------------------------------------------


def ensure_org_and_user(app: Any) -> tuple[uuid.UUID, uuid.UUID]:
    """The bench organisation (with its keys) and a caseworker in it; idempotent."""
    from sqlalchemy import select

    from referral_api.access.actor import Actor
    from referral_api.access.roles import OrgType, Role
    from referral_api.admin import service
    from referral_api.auth.models import Organisation, User
    from referral_api.extensions import db, hasher

    with app.app_context(), db.session_factory_for(app)() as session:
        org = session.scalars(select(Organisation).where(Organisation.name == ORG_NAME)).first()
        if org is None:
            org = service.create_organisation(
                session, Actor.system(), name=ORG_NAME, org_type=OrgType.NGO
            )
        user = session.scalars(select(User).where(User.email == USER_EMAIL)).first()
        if user is None:
            user = service.create_user(
                session,
                Actor.system(),
                hasher,
                org,
                email=USER_EMAIL,
                display_name="Bench caseworker",
                role=Role.CASEWORKER,
                password=USER_PASSWORD,
            )
        session.commit()
        return org.id, user.id


# ---- synthetic people --------------------------------------------------------------------
# Invented names in several languages and scripts: family names are built from roots and
# suffixes so that 100,000 people share few full names (a full-name search meets a handful).


@dataclass(frozen=True)
class Profile:
    nationality: str
    languages: tuple[str, ...]
    female: tuple[str, ...]
    male: tuple[str, ...]
    roots: tuple[str, ...]
    suffixes: tuple[str, ...]
    phone_prefix: str
    phone_digits: int
    weight: int


def _w(text: str) -> tuple[str, ...]:
    return tuple(text.split())


PROFILES: tuple[Profile, ...] = (
    Profile(
        "UA",
        ("uk", "ru"),
        _w("Olena Iryna Oksana Nataliia Tetiana Yuliia Halyna Svitlana Mariia Anastasiia Daryna"),
        _w("Andrii Oleksandr Serhii Taras Bohdan Mykola Yurii Dmytro"),
        _w("Koval Shevch Bondar Tkach Melnyk Kravch Oliin Lysen Moroz Hrytsen Savch Petr"),
        _w("enko uk chuk ko yshyn iv"),
        "+38050",
        7,
        14,
    ),
    Profile(
        "UA",
        ("uk",),
        _w("Олена Ірина Оксана Наталія Тетяна Юлія Галина Світлана Марія Дарина"),
        _w("Андрій Олександр Сергій Тарас Богдан Микола Юрій"),  # noqa: RUF001
        _w("Коваль Шевч Бондар Ткач Мельн Кравч Олійн Лисен Мороз Гриц Савч"),
        _w("енко ук чук ко ишин"),
        "+38067",
        7,
        8,
    ),
    Profile(
        "RU",
        ("ru",),
        _w("Алёна Анна Екатерина Ольга Светлана Ксения Валерия Полина Вера"),  # noqa: RUF001
        _w("Алексей Дмитрий Иван Сергей Павел Максим"),
        _w("Смирн Иван Кузнец Попов Соколов Лебед Козл Новик Морозов Волк Соловь"),
        _w("ова ина ская ева"),
        "+7916",
        7,
        6,
    ),
    Profile(
        "RO",
        ("ro",),
        _w("Mariana Ioana Elena Andreea Alexandra Cristina Daniela Roxana Bianca Gabriela"),
        _w("Andrei Mihai Ionut Florin Bogdan Vasile"),
        _w("Pop Ionesc Dumitr Stan Gheorgh Munt Constantin Marin Tudor Radul Lup Ardel"),
        _w("escu eanu u a ache"),
        "+4072",
        7,
        8,
    ),
    Profile(
        "SY",
        ("ar",),
        _w("Fatima Aisha Mariam Noor Layla Huda Rania Samira Zainab Amal Yasmin"),
        _w("Ahmed Mohammed Omar Khaled Youssef Hassan Bilal"),
        _w("Hassan Khalil Haddad Nasser Darwish Saleh Mansour Qasim Bakr Haidar Jaber Sabbagh"),
        _w("a i ani awi"),
        "+96394",
        7,
        8,
    ),
    Profile(
        "SY",
        ("ar",),
        _w("فاطمة عائشة مريم نور ليلى هدى رانيا سميرة زينب أمل ياسمين"),
        _w("أحمد محمد عمر خالد يوسف حسن بلال"),
        _w("حسن خليل حداد ناصر درويش صالح منصور قاسم بكر حيدر جابر"),
        _w("ي اوي اني ية"),
        "+96393",
        7,
        5,
    ),
    Profile(
        "DE",
        ("de",),
        _w("Jana Lena Sophie Katharina Johanna Jürgen Anke Birgit Ute Sabine"),
        _w("Jürgen Klaus Stefan Thomas Lukas Matthias"),
        _w("Müller Schneid Fisch Web Meyer Wagn Beck Schulz Hoffmann Schäf Koch Bau Richt"),
        _w("er mann ke s"),
        "+49151",
        8,
        4,
    ),
    Profile(
        "NG",
        ("en", "ig"),
        _w("Grace Chioma Ngozi Adaeze Blessing Favour Amarachi Ifeoma Joy Precious Esther"),
        _w("Emeka Chinedu Ikenna Obinna Tunde Femi"),
        _w("Okafor Okonkw Eze Nwosu Adeyem Obi Uche Nnamdi Okoro Chukw Balog Ibrahim"),
        _w("o u a emeka"),
        "+234803",
        7,
        10,
    ),
    Profile(
        "VN",
        ("vi",),
        _w("Lan Hoa Mai Linh Huong Thu Trang Ngoc Phuong Thao Anh"),
        _w("Minh Tuan Hung Duc Quang"),
        _w("Nguyen Tran Le Pham Hoang Huynh Phan Vu Vo Dang Bui Do"),
        _w("Thi_Lan Van_Minh Thi_Hoa Thi_Mai Duc"),
        "+8491",
        7,
        6,
    ),
    Profile(
        "BR",
        ("pt",),
        _w("Maria Ana Juliana Fernanda Camila Beatriz Larissa Gabriela Leticia Raquel"),
        _w("João José Carlos Paulo Lucas"),
        _w("dos_Sant Silv Oliveir Souz Rodrigu Ferreir Alv Pereir Lim Gom Ribeir Carvalh"),
        _w("a o es inho"),
        "+55119",
        8,
        6,
    ),
    Profile(
        "IN",
        ("hi", "en"),
        _w("Priya Anjali Sunita Pooja Kavita Neha Deepa Lakshmi Meera Radha Asha"),
        _w("Rahul Amit Vikram Arjun Ravi"),
        _w("Sharm Verm Gupt Sing Kum Pat Red Nai Iyer Das Mishr Yad"),
        _w("a an i ar"),
        "+9198",
        8,
        6,
    ),
    Profile(
        "TR",
        ("tr",),
        _w("Ayşe Fatma Emine Hatice Zeynep Elif Merve Büşra Esra Özlem"),
        _w("Mehmet Mustafa Ahmet Ali Hüseyin"),
        _w("Yılmaz Kaya Demir Şahin Çelik Yıldız Yıldırım")  # noqa: RUF001
        + _w("Öztürk Aydın Özdemir Arslan Doğan"),  # noqa: RUF001
        _w("oğlu er can gül"),
        "+90532",
        7,
        5,
    ),
    Profile(
        "GN",
        ("fr",),
        _w("Amina Mariama Fatoumata Aissatou Kadiatou Hawa Djenabou Mariame Oumou"),
        _w("Mamadou Ibrahima Alpha Sekou"),
        _w("Diallo Barry Bah Sow Camara Condé Touré Keita Sylla Baldé Soumah Kouyaté"),
        _w("  "),
        "+22462",
        7,
        4,
    ),
    Profile(
        "IE",
        ("en", "ga"),
        _w("Siobhán Aoife Niamh Ciara Orla Sinéad Róisín Aisling Clodagh"),
        _w("Seán Ciarán Pádraig Eoin"),
        _w("O'Brien O'Connor Murphy Kelly Walsh O'Sullivan Byrne Ryan McCarthy Doyle Gallagher"),
        _w("  "),
        "+35387",
        7,
        3,
    ),
    Profile(
        "HR",
        ("hr",),
        _w("Ana Marija Ivana Petra Maja Lucija Katarina Martina"),
        _w("Ivan Marko Josip Luka"),
        _w("Horvat Kovač Babić Marić Jurić Novak Knežević Vuković Marković Petrović Matić"),
        _w("  "),
        "+38591",
        7,
        3,
    ),
)

_PROFILE_WEIGHTS = [p.weight for p in PROFILES]
_EXPLOITATION = ["sexual", "labour", "domestic_servitude", "forced_criminality", "forced_begging"]
_CONTROL = [
    "debt_bondage",
    "document_confiscation",
    "threats",
    "isolation",
    "false_promises",
    "withholding_wages",
    "restricted_movement",
]
_GBV = ["physical_assault", "psychological_abuse", "sexual_assault", "denial_of_resources"]
_RECRUITERS = ["acquaintance", "recruitment_agency", "stranger", "employer", "friend", "family"]
_NEEDS = [
    "Legal counselling, psychosocial support.",
    "Safe accommodation; medical check; interpreter needed.",
    "Residence status advice; vocational training; childcare.",
    "Trauma counselling; support in criminal proceedings.",
]
_PLACES = ["Harbour district", "Bus station", "Agricultural site", "Private household", "Bar"]


def _family_name(rng: random.Random, profile: Profile) -> str:
    root = rng.choice(profile.roots)
    suffix = rng.choice(profile.suffixes) if profile.suffixes else ""
    name = root + suffix
    if profile.nationality == "VN":
        name = f"{root} {suffix}"
    return name.replace("_", " ")


def person(index: int, seed: int = SEED) -> dict[str, Any]:
    """Synthetic person `index` (deterministic): id, case metadata and category values."""
    rng = random.Random(seed * 1_000_003 + index)
    case_id = uuid.UUID(int=rng.getrandbits(128), version=4)
    profile = rng.choices(PROFILES, weights=_PROFILE_WEIGHTS)[0]
    sex = "female" if rng.random() < 0.8 else "male"
    given = rng.choice(profile.female if sex == "female" else profile.male)
    if rng.random() < 0.35:
        second = rng.choice(profile.female if sex == "female" else profile.male)
        if second != given:
            given = f"{given} {second}"
    family = _family_name(rng, profile)
    if rng.random() < 0.25:
        family = f"{family} {_family_name(rng, profile)}"
    aliases = [f"{given.split()[0]} {_family_name(rng, profile)}"] if rng.random() < 0.2 else []
    born = date(1960, 1, 1) + timedelta(days=rng.randrange(0, 365 * 45))
    national = "".join(str(rng.randrange(10)) for _ in range(profile.phone_digits))
    case_type = "thb" if rng.random() < 0.65 else "gbv"
    identity = {
        "given_name": given,
        "family_name": family,
        "aliases": aliases,
        "date_of_birth": born.isoformat(),
        "sex": sex,
        "nationality": profile.nationality,
        "languages": list(profile.languages),
        "documents": [
            {
                "type": "passport",
                "country": profile.nationality,
                "number": f"{profile.nationality}{rng.randrange(10**7, 10**8)}",
            }
        ],
    }
    contact = {
        "phone": profile.phone_prefix + national,
        "email": f"p{index}@mail.example" if rng.random() < 0.3 else None,
        "safe_contact_notes": "Text only; do not call after 18:00.",
    }
    shelter = rng.random() < 0.5
    location = {
        "address": f"Shelter room {rng.randrange(1, 60)}" if shelter else None,
        "is_shelter": shelter,
    }
    incident: dict[str, Any] = {
        "incident_date": f"{rng.randrange(2015, 2026)}",
        "incident_place": rng.choice(_PLACES),
        "narrative": "Synthetic narrative: recruited with a false job offer; documents taken.",
    }
    if case_type == "thb":
        incident["exploitation_types"] = [rng.choice(_EXPLOITATION)]
        incident["means_of_control"] = rng.sample(_CONTROL, 2)
        incident["recruiter_relation"] = rng.choice(_RECRUITERS)
    else:
        incident["gbv_type"] = rng.choice(_GBV)
        incident["recruiter_relation"] = "intimate_partner"
    return {
        "id": case_id,
        "case_type": case_type,
        "risk_level": rng.choice(["low", "medium", "high", "critical"]),
        "status": rng.choice(["open", "active"]),
        "nrm_stage": rng.choice(["identified", "assistance", "reflection_period"]),
        "identity": identity,
        "contact": contact,
        "location": location,
        "incident": incident,
        "needs": {"assessment": rng.choice(_NEEDS), "plan": None},
    }


def request_body(index: int) -> dict[str, Any]:
    """The POST /api/v1/cases body for synthetic person `index` (the API's request shape)."""
    p = person(index)
    return {
        "case_type": p["case_type"],
        "risk_level": p["risk_level"],
        "identity": p["identity"],
        "contact": p["contact"],
        "location": p["location"],
        "incident": p["incident"],
        "needs": p["needs"],
    }


def full_name(p: dict[str, Any]) -> str:
    return f"{p['identity']['given_name']} {p['identity']['family_name']}"


def write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")
