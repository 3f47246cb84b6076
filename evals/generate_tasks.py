"""Writes the intelgraph eval datasets: `tasks/golden.jsonl`, `tasks/critical_paths.jsonl` and a
manifest beside each. Deterministic: one seeded `random.Random`, no clock, no environment, so a
second run writes the same bytes (a test checks). Standard library only.

    python evals/generate_tasks.py            # write evals/tasks/
    python evals/generate_tasks.py --out DIR  # write elsewhere
    python evals/generate_tasks.py --check    # exit 1 if evals/tasks/ differs from a fresh run

Published versions are immutable: when the content changes, bump the version in the dataset's
name (`intelgraph_golden.test.1` -> `.2`); writing different content under a name whose
manifest already exists is refused.

The tasks are synthetic, for an analyst assistant over an entity graph ("intelgraph"): fact
questions over a context paragraph, entity extraction, classification, arithmetic word problems
and tool calls. Organisations, people, vessels, order ids and personal data are invented (e-mail
at example.com, phone numbers in the fictional +1 202 555 01xx range); country capitals are
real. Every input's last user message is unique across both datasets, because a simulated
provider looks tasks up by it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import sys
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

SEED = 20_170_517
GENERATOR = "evals/generate_tasks.py"
SCHEMA_ID = "maestro.eval.task.v1"

Row = dict[str, Any]

KINDS = ("qa", "extraction", "classification", "arithmetic", "tool_use")
DIFFICULTIES = ("easy", "medium", "hard")


@dataclass(frozen=True)
class DatasetPlan:
    """What one dataset holds: tasks per kind, difficulty shares and how many carry PII."""

    name: str  # name.split.version
    file: str
    id_prefix: str
    kinds: dict[str, int]
    difficulty_shares: tuple[int, int, int]  # easy, medium, hard, in percent
    pii: int

    @property
    def rows(self) -> int:
        return sum(self.kinds.values())


GOLDEN = DatasetPlan(
    name="intelgraph_golden.test.1",
    file="golden.jsonl",
    id_prefix="golden",
    kinds={"qa": 140, "extraction": 120, "classification": 120, "arithmetic": 110, "tool_use": 110},
    difficulty_shares=(40, 35, 25),
    pii=90,  # 15%
)
CRITICAL_PATHS = DatasetPlan(
    name="intelgraph_critical_paths.test.1",
    file="critical_paths.jsonl",
    id_prefix="critical",
    kinds={"qa": 24, "extraction": 24, "classification": 21, "arithmetic": 21, "tool_use": 60},
    difficulty_shares=(30, 40, 30),
    pii=60,  # 40%
)
PLANS = (GOLDEN, CRITICAL_PATHS)

# --- vocabulary -------------------------------------------------------------------------------
# fmt: off

FIRST_NAMES = (
    "Amara", "Bastian", "Chiara", "Dmitri", "Elif", "Farah", "Gustavo", "Hana", "Ibrahim",
    "Jonas", "Keiko", "Lucía", "Mateo", "Nadia", "Oskar", "Priya", "Quentin", "Rania", "Sven",
    "Tomás", "Uma", "Viktor", "Wen", "Ximena", "Yusuf", "Zofia", "Aiko", "Bruno", "Céline",
    "Dario", "Esme", "Femi", "Greta", "Hugo", "Ines", "Kofi", "Leila", "Marek", "Noor", "Olu",
)
LAST_NAMES = (
    "Okafor", "Lindqvist", "Moreau", "Tanaka", "Haddad", "Novak", "Fernández", "Kowalski",
    "Mensah", "Schreiber", "Rossi", "Nakamura", "Petrov", "Adeyemi", "Castillo", "Eriksen",
    "Varga", "Chen", "Dubois", "Brennan", "Quispe", "Sato", "Achterberg", "Ibáñez", "Kariuki",
    "Lambert", "Mäkinen", "Nguyen", "Oyelaran", "Pereira", "Rahman", "Silva", "Thorne", "Weiss",
)
ORG_HEADS = (
    "Aster", "Boreal", "Cobalt", "Delphine", "Ember", "Fjord", "Granite", "Halcyon", "Iris",
    "Juniper", "Kestrel", "Lumen", "Meridian", "Nimbus", "Onyx", "Pallas", "Quill", "Redwood",
    "Sable", "Tessera", "Umber", "Vantage", "Wren", "Yarrow", "Zephyr", "Corvid",
)
ORG_TAILS = (
    "Analytics", "Logistics", "Maritime", "Systems", "Holdings", "Labs", "Freight", "Energy",
    "Biotech", "Networks", "Capital", "Robotics",
)
SECTORS = {
    "Analytics": "data analytics", "Logistics": "logistics", "Maritime": "shipping",
    "Systems": "industrial software", "Holdings": "investment", "Labs": "applied research",
    "Freight": "freight forwarding", "Energy": "renewable energy", "Biotech": "biotechnology",
    "Networks": "telecommunications", "Capital": "venture capital", "Robotics": "robotics",
}
CITIES = (
    "Lisbon", "Oslo", "Nairobi", "Montréal", "Osaka", "Valparaíso", "Kraków", "Accra",
    "Wellington", "Rotterdam", "Hamburg", "Singapore", "Busan", "Cape Town", "Lagos", "Mumbai",
    "Reykjavík", "Tallinn", "Marseille", "Seville", "Porto", "Gdańsk", "Antwerp", "Genoa",
    "Doha", "Perth", "Auckland", "Vancouver", "Halifax", "Cartagena", "Recife", "Durban",
    "Mombasa", "Chennai", "Colombo", "Da Nang", "Kaohsiung", "Tromsø", "Gothenburg", "Aarhus",
    "Turku", "Riga", "Valencia", "Bilbao", "Lyon", "Munich", "Zürich", "Geneva", "Salzburg",
    "Bratislava", "Ljubljana", "Thessaloniki", "Izmir", "Tbilisi", "Montevideo", "Quito",
)
COUNTRIES = (
    ("France", "Paris", "Western Europe"), ("Japan", "Tokyo", "East Asia"),
    ("Australia", "Canberra", "Oceania"), ("Canada", "Ottawa", "North America"),
    ("Brazil", "Brasília", "South America"), ("Kenya", "Nairobi", "East Africa"),
    ("Norway", "Oslo", "Northern Europe"), ("Peru", "Lima", "South America"),
    ("Vietnam", "Hanoi", "Southeast Asia"), ("Egypt", "Cairo", "North Africa"),
    ("Chile", "Santiago", "South America"), ("Poland", "Warsaw", "Central Europe"),
    ("Ghana", "Accra", "West Africa"), ("New Zealand", "Wellington", "Oceania"),
    ("Turkey", "Ankara", "Western Asia"), ("Morocco", "Rabat", "North Africa"),
    ("Switzerland", "Bern", "Central Europe"), ("South Korea", "Seoul", "East Asia"),
    ("Argentina", "Buenos Aires", "South America"), ("Portugal", "Lisbon", "Southern Europe"),
    ("Finland", "Helsinki", "Northern Europe"), ("Indonesia", "Jakarta", "Southeast Asia"),
    ("Nigeria", "Abuja", "West Africa"), ("Pakistan", "Islamabad", "South Asia"),
    ("Mongolia", "Ulaanbaatar", "East Asia"), ("Colombia", "Bogotá", "South America"),
    ("Ireland", "Dublin", "Western Europe"), ("Austria", "Vienna", "Central Europe"),
    ("Thailand", "Bangkok", "Southeast Asia"), ("Kazakhstan", "Astana", "Central Asia"),
    ("Tanzania", "Dodoma", "East Africa"), ("Iceland", "Reykjavík", "Northern Europe"),
    ("Ecuador", "Quito", "South America"), ("Uruguay", "Montevideo", "South America"),
    ("Jordan", "Amman", "Western Asia"), ("Nepal", "Kathmandu", "South Asia"),
    ("Hungary", "Budapest", "Central Europe"), ("Greece", "Athens", "Southern Europe"),
    ("Sweden", "Stockholm", "Northern Europe"), ("Denmark", "Copenhagen", "Northern Europe"),
    ("Czechia", "Prague", "Central Europe"), ("Philippines", "Manila", "Southeast Asia"),
    ("Ethiopia", "Addis Ababa", "East Africa"), ("Senegal", "Dakar", "West Africa"),
    ("Latvia", "Riga", "Northern Europe"), ("Estonia", "Tallinn", "Northern Europe"),
    ("Lithuania", "Vilnius", "Northern Europe"), ("Croatia", "Zagreb", "Southern Europe"),
    ("Slovenia", "Ljubljana", "Central Europe"), ("Bhutan", "Thimphu", "South Asia"),
    ("Laos", "Vientiane", "Southeast Asia"), ("Uzbekistan", "Tashkent", "Central Asia"),
    ("Georgia", "Tbilisi", "the Caucasus"), ("Armenia", "Yerevan", "the Caucasus"),
    ("Zambia", "Lusaka", "Southern Africa"), ("Namibia", "Windhoek", "Southern Africa"),
    ("Botswana", "Gaborone", "Southern Africa"), ("Cuba", "Havana", "the Caribbean"),
)
LARGEST_CITY = {
    "Australia": "Sydney", "Canada": "Toronto", "Brazil": "São Paulo", "Turkey": "Istanbul",
    "Morocco": "Casablanca", "Switzerland": "Zürich", "Nigeria": "Lagos", "Pakistan": "Karachi",
    "New Zealand": "Auckland", "Kazakhstan": "Almaty", "Tanzania": "Dar es Salaam",
    "Vietnam": "Ho Chi Minh City", "Ecuador": "Guayaquil",
}
VESSEL_WORDS_A = (
    "Northern", "Silver", "Amber", "Coral", "Iron", "Morning", "Crimson", "Quiet", "Golden",
    "Pale", "Arctic", "Southern", "Western", "Bright",
)
VESSEL_WORDS_B = (
    "Lark", "Heron", "Tide", "Meridian", "Star", "Dawn", "Current", "Petrel", "Harbour",
    "Osprey", "Wake", "Horizon", "Gull", "Compass",
)
MONTHS = (
    "January", "February", "March", "April", "May", "June", "July", "August", "September",
    "October", "November", "December",
)
CURRENCIES = (
    ("USD", "US dollars"), ("EUR", "euros"), ("GBP", "British pounds"), ("JPY", "Japanese yen"),
    ("CHF", "Swiss francs"), ("NOK", "Norwegian kroner"), ("CAD", "Canadian dollars"),
    ("AUD", "Australian dollars"), ("SEK", "Swedish kronor"), ("INR", "Indian rupees"),
)
SYSTEM_PROMPTS = (
    "You are IntelGraph, an analyst assistant. Answer concisely and only from the material "
    "provided.",
    "You are an analyst assistant for an intelligence graph. Keep answers short and exact.",
    "You are IntelGraph. Use a tool when one can answer the request; otherwise reply briefly.",
    "You support analysts working on entity investigations. Reply with the answer only.",
)

# fmt: on

# --- tools ------------------------------------------------------------------------------------


def _tool(name: str, description: str, properties: dict[str, Any]) -> Row:
    return {
        "type": "function",
        "function": {
            "name": name,
            "description": description,
            "parameters": {
                "type": "object",
                "properties": properties,
                "required": list(properties),
                "additionalProperties": False,
            },
        },
    }


TOOLS: dict[str, Row] = {
    "lookup_order": _tool(
        "lookup_order",
        "Look up an order's status, items and shipping by its id.",
        {"order_id": {"type": "string", "description": "Order id, such as ORD-48213."}},
    ),
    "get_weather": _tool(
        "get_weather",
        "Current weather for a city.",
        {
            "city": {"type": "string", "description": "City name, such as Lisbon."},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        },
    ),
    "search_entities": _tool(
        "search_entities",
        "Search the entity graph for a person, organization, location or vessel by name.",
        {
            "name": {"type": "string", "description": "The entity's name as written."},
            "kind": {"type": "string", "enum": ["person", "organization", "location", "vessel"]},
        },
    ),
    "convert_currency": _tool(
        "convert_currency",
        "Convert an amount between currencies at today's rate.",
        {
            "amount": {"type": "number"},
            "from": {"type": "string", "description": "ISO 4217 code, such as EUR."},
            "to": {"type": "string", "description": "ISO 4217 code, such as USD."},
        },
    ),
    "lookup_customer": _tool(
        "lookup_customer",
        "Find a customer record by e-mail address.",
        {"email": {"type": "string", "description": "The customer's e-mail address."}},
    ),
}


@dataclass(frozen=True)
class Org:
    name: str
    sector: str
    hq: str
    founded: int
    ceo: str
    employees: int
    parent: str | None


@dataclass(frozen=True)
class Person:
    name: str
    email: str
    phone: str


def ascii_slug(text: str) -> str:
    plain = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return "".join(c for c in plain.lower() if c.isalnum() or c == "-")


def number_text(value: Fraction) -> str:
    """A canonical number: integers plain, decimals without trailing zeros (12.5)."""
    if value.denominator == 1:
        return str(value.numerator)
    scaled = value * 100
    if scaled.denominator != 1:
        raise ValueError(f"{value} has more than two decimals")
    whole, cents = divmod(abs(scaled.numerator), 100)
    sign = "-" if value < 0 else ""
    return f"{sign}{whole}.{cents:02d}".rstrip("0")


def poss(name: str) -> str:
    """The possessive: Kestrel Labs' office, Oslo's weather."""
    return f"{name}'" if name.endswith("s") else f"{name}'s"


def grouped(value: int) -> str:
    return f"{value:,}"


class Factory:
    """Makes tasks of each kind from one seeded random source and one invented world."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.used_inputs: set[str] = set()
        self.used_codes: set[str] = set()
        self.people = self._people()
        self.orgs = self._orgs()
        self.decks: dict[str, list[Any]] = {}

    # -- world ---------------------------------------------------------------------------------

    def _people(self) -> list[Person]:
        names = [f"{f} {last}" for f in FIRST_NAMES for last in LAST_NAMES]
        self.rng.shuffle(names)
        people = []
        for index, name in enumerate(names[:400]):
            first, last = name.split(" ", 1)
            email = f"{ascii_slug(first)}.{ascii_slug(last)}@example.com"
            phone = f"+1 202 555 01{index % 100:02d}"
            people.append(Person(name, email, phone))
        return people

    def _orgs(self) -> list[Org]:
        names = [f"{h} {t}" for h in ORG_HEADS for t in ORG_TAILS]
        self.rng.shuffle(names)
        orgs: list[Org] = []
        for index, name in enumerate(names):
            parent = None
            # Every fourth organisation belongs to one made earlier, so chains stay acyclic.
            if index >= 20 and index % 4 == 0:
                parent = orgs[self.rng.randrange(index)].name
            orgs.append(
                Org(
                    name=name,
                    sector=SECTORS[name.split(" ")[-1]],
                    hq=self.rng.choice(CITIES),
                    founded=self.rng.randint(1952, 2019),
                    ceo=self.rng.choice(self.people).name,
                    employees=self.rng.randrange(40, 48_000, 10),
                    parent=parent,
                )
            )
        return orgs

    def org(self, name: str) -> Org:
        return next(o for o in self.orgs if o.name == name)

    def draw(self, deck: str, items: Sequence[Any]) -> Any:
        """The next item of a shuffled deck, reshuffled when spent: spreads use evenly."""
        cards = self.decks.get(deck)
        if not cards:
            cards = list(items)
            self.rng.shuffle(cards)
            self.decks[deck] = cards
        return cards.pop()

    def person(self) -> Person:
        person: Person = self.draw("people", self.people)
        return person

    def any_org(self) -> Org:
        org: Org = self.draw("orgs", self.orgs)
        return org

    def code(self, prefix: str, digits: int) -> str:
        while True:
            value = f"{prefix}{self.rng.randrange(10 ** (digits - 1), 10**digits)}"
            if value not in self.used_codes:
                self.used_codes.add(value)
                return value

    def date(self) -> str:
        return f"{self.rng.randint(1, 28)} {self.rng.choice(MONTHS)} {self.rng.randint(2021, 2025)}"

    def vessel(self) -> str:
        return f"{self.rng.choice(VESSEL_WORDS_A)} {self.rng.choice(VESSEL_WORDS_B)}"

    def pick(self, options: Sequence[str]) -> str:
        return self.rng.choice(options)

    # -- QA ------------------------------------------------------------------------------------

    def qa(self, difficulty: str, pii: bool) -> Row:
        if pii:
            return self._qa_pii(difficulty)
        roll = self.rng.random()
        if difficulty == "easy":
            return self._qa_capital_easy() if roll < 0.5 else self._qa_org_fact(brief=True)
        if difficulty == "medium":
            return self._qa_capital_medium() if roll < 0.35 else self._qa_org_fact(brief=False)
        row = self._qa_multi_hop() if roll < 0.55 else self._qa_compare()
        if self.rng.random() < 0.3:
            # The answer is in the context: a model that calls the offered tool wastes a call.
            row["tools"] = [TOOLS["search_entities"]]
        return row

    def _qa_capital_easy(self) -> Row:
        country, capital, region = self.draw("countries", COUNTRIES)
        context = f"{country} is a country in {region}. Its capital is {capital}."
        question = self.pick(
            (
                f"What is the capital of {country}?",
                f"Name the capital city of {country}.",
                f"Which city is the capital of {country}?",
                f"{poss(country)} capital is which city?",
            )
        )
        return {
            "input": f"{question} Answer with the city name only.\n\nContext: {context}",
            "context": context,
            "expected": capital,
        }

    def _qa_capital_medium(self) -> Row:
        country, capital, region = self.draw("countries", COUNTRIES)
        largest = LARGEST_CITY.get(country)
        other = self.draw("countries", COUNTRIES)
        sentences = [f"{country} lies in {region}."]
        while other[0] == country:
            other = self.draw("countries", COUNTRIES)
        if largest:
            sentences.append(
                f"Its largest city is {largest}, but the seat of government is {capital}."
            )
        else:
            sentences.append(f"{capital} is both its capital and its largest city.")
        sentences.append(
            f"Analysts sometimes confuse it with {other[0]}, whose capital is {other[1]}."
        )
        context = " ".join(sentences)
        question = self.pick(
            (
                f"According to the briefing, which city is the capital of {country}?",
                f"Using only the note below, give the capital of {country}.",
                f"From the context, where is {poss(country)} seat of government?",
            )
        )
        return {
            "input": f"{question} Reply with one city.\n\nContext: {context}",
            "context": context,
            "expected": capital,
        }

    def _org_sentences(self, org: Org) -> dict[str, str]:
        sentences = {
            "hq": f"{org.name} is headquartered in {org.hq}.",
            "founded": f"{org.name} was founded in {org.founded}.",
            "ceo": f"The chief executive of {org.name} is {org.ceo}.",
            "employees": f"{org.name} employs {org.employees} people.",
            "sector": f"{org.name} works in {org.sector}.",
        }
        if org.parent:
            sentences["parent"] = f"{org.name} is a subsidiary of {org.parent}."
        return sentences

    def _qa_org_fact(self, *, brief: bool) -> Row:
        org = self.any_org()
        facts = self._org_sentences(org)
        fact = self.pick(sorted(k for k in facts if k != "sector"))
        questions: dict[str, tuple[tuple[str, ...], str]] = {
            "hq": (
                (
                    f"Where is {org.name} headquartered?",
                    f"In which city is {org.name} based?",
                    f"Which city hosts the head office of {org.name}?",
                ),
                org.hq,
            ),
            "founded": (
                (
                    f"In what year was {org.name} founded?",
                    f"When was {org.name} established? Give the year.",
                    f"Which year did {org.name} start operating?",
                ),
                str(org.founded),
            ),
            "ceo": (
                (
                    f"Who is the chief executive of {org.name}?",
                    f"Who runs {org.name}?",
                    f"Name the CEO of {org.name}.",
                ),
                org.ceo,
            ),
            "employees": (
                (
                    f"How many people does {org.name} employ? Answer with digits only.",
                    f"What is {poss(org.name)} headcount, as a plain number?",
                ),
                str(org.employees),
            ),
            "parent": (
                (
                    f"Which company owns {org.name}?",
                    f"What is the parent company of {org.name}?",
                ),
                org.parent or "",
            ),
        }
        options, answer = questions[fact]
        if brief:
            context = facts[fact]
        else:
            rest = [facts[k] for k in facts if k not in (fact, "sector")]
            self.rng.shuffle(rest)
            distractor = self.any_org()
            while distractor.name == org.name:
                distractor = self.any_org()
            context = " ".join(
                [
                    facts["sector"],
                    facts[fact],
                    *rest[:2],
                    f"By comparison, {distractor.name} is based in {distractor.hq} and was "
                    f"founded in {distractor.founded}.",
                ]
            )
        question = self.pick(options)
        return {
            "input": f"{question}\n\nContext: {context}",
            "context": context,
            "expected": answer,
        }

    def _qa_multi_hop(self) -> Row:
        child = self.draw("children", [o for o in self.orgs if o.parent])
        parent = self.org(child.parent)
        hop = self.pick(("hq", "ceo", "founded"))
        context = (
            f"{child.name} ({child.sector}) is headquartered in {child.hq} and is a subsidiary "
            f"of {parent.name}. {parent.name} is headquartered in {parent.hq}, was founded in "
            f"{parent.founded} and is led by {parent.ceo}. {poss(child.name)} own chief executive "
            f"is {child.ceo}."
        )
        question, answer = {
            "hq": (
                f"In which city is the parent company of {child.name} headquartered?",
                parent.hq,
            ),
            "ceo": (f"Who leads the company that owns {child.name}?", parent.ceo),
            "founded": (
                f"In what year was the parent of {child.name} founded?",
                str(parent.founded),
            ),
        }[hop]
        return {
            "input": f"{question} Answer from the context only.\n\nContext: {context}",
            "context": context,
            "expected": answer,
        }

    def _qa_compare(self) -> Row:
        first, second = self.any_org(), self.any_org()
        while second.name == first.name or second.employees == first.employees:
            second = self.any_org()
        measure = self.pick(("employees", "founded"))
        context = (
            f"{first.name} was founded in {first.founded} and employs "
            f"{grouped(first.employees)} people. {second.name} was founded in {second.founded} "
            f"and employs {grouped(second.employees)} people."
        )
        if measure == "founded" and first.founded != second.founded:
            question = f"Which is older, {first.name} or {second.name}?"
            answer = first.name if first.founded < second.founded else second.name
        else:
            question = f"Which company has more employees: {first.name} or {second.name}?"
            answer = first.name if first.employees > second.employees else second.name
        return {
            "input": f"{question} Reply with the company name.\n\nContext: {context}",
            "context": context,
            "expected": answer,
        }

    def _qa_pii(self, difficulty: str) -> Row:
        org = self.any_org()
        contact = self.person()
        asker = self.person()
        context = (
            f"{org.name} is headquartered in {org.hq}. Media enquiries go to {contact.name}, "
            f"reachable at {contact.email} or {contact.phone}."
        )
        if difficulty == "hard":
            context += f" Investor enquiries go to {asker.name} ({asker.email})."
        question, answer = self.pick_pair(
            (
                (f"What e-mail address handles media enquiries for {org.name}?", contact.email),
                (f"Which phone number reaches {poss(org.name)} media contact?", contact.phone),
                (f"Who is the media contact at {org.name}?", contact.name),
                (
                    f"I'm {asker.name} ({asker.email}). Where is {org.name} headquartered?",
                    org.hq,
                ),
            )
        )
        return {
            "input": f"{question}\n\nContext: {context}",
            "context": context,
            "expected": answer,
        }

    def pick_pair(self, options: Sequence[tuple[str, str]]) -> tuple[str, str]:
        return options[self.rng.randrange(len(options))]

    # -- extraction ----------------------------------------------------------------------------

    def extraction(self, difficulty: str, pii: bool) -> Row:
        if pii:
            text, field, answer = self._contact_text(difficulty)
        else:
            make = self.pick_fn((self._shipping_text, self._meeting_text, self._incident_text))
            text, field, answer = make(difficulty)
        instruction = self.pick(
            (
                f"Extract the {field} from the text below. Reply with it exactly as written.",
                f"What is the {field} in this note? Answer with the value only.",
                f"From the following report, pull out the {field}.",
                f"Read the text and give the {field}, nothing else.",
            )
        )
        return {"input": f"{instruction}\n\nText: {text}", "context": text, "expected": answer}

    def pick_fn(
        self, options: Sequence[Callable[[str], tuple[str, str, str]]]
    ) -> Callable[[str], tuple[str, str, str]]:
        return options[self.rng.randrange(len(options))]

    def _shipping_text(self, difficulty: str) -> tuple[str, str, str]:
        vessel, date = self.vessel(), self.date()
        origin, destination = self.rng.sample(CITIES, 2)
        org = self.any_org()
        containers = self.rng.randint(12, 940)
        if difficulty == "easy":
            text = f"The vessel {vessel} docked in {destination} on {date}."
            field, answer = self.pick_pair(
                (("vessel name", vessel), ("port", destination), ("date", date))
            )
            return text, field, answer
        text = (
            f"On {date}, the vessel {vessel} left {origin} bound for {destination} with "
            f"{containers} containers consigned to {org.name}."
        )
        if difficulty == "hard":
            other = self.vessel()
            while other == vessel:
                other = self.vessel()
            text += f" A second ship, the {other}, was delayed in {origin} by a customs inspection."
        field, answer = self.pick_pair(
            (
                ("destination port", destination),
                ("port of departure", origin),
                ("consignee organization", org.name),
                ("departure date", date),
                ("name of the vessel that left port", vessel),
            )
        )
        return text, field, answer

    def _meeting_text(self, difficulty: str) -> tuple[str, str, str]:
        first, second = self.person(), self.person()
        while second == first:
            second = self.person()
        org_a, org_b = self.any_org(), self.any_org()
        while org_b == org_a:
            org_b = self.any_org()
        city, date = self.pick(CITIES), self.date()
        topic = self.pick(
            (
                "a joint bid for a port contract",
                "sanctions screening of suppliers",
                "a data-sharing agreement",
                "the audit of a shell company",
                "a shipment of drone parts",
            )
        )
        if difficulty == "easy":
            text = f"{first.name} travelled to {city} on {date} to discuss {topic}."
            field, answer = self.pick_pair(
                (("city", city), ("person's name", first.name), ("date", date))
            )
            return text, field, answer
        text = (
            f"{first.name} of {org_a.name} met {second.name} of {org_b.name} in {city} on "
            f"{date} to discuss {topic}."
        )
        if difficulty == "hard":
            text += (
                f" Afterwards {second.name} flew to {self.pick(CITIES)}, while {first.name} "
                f"stayed behind."
            )
        field, answer = self.pick_pair(
            (
                ("city where the meeting took place", city),
                (f"organization that {second.name} represents", org_b.name),
                (f"name of the person from {org_a.name}", first.name),
                ("meeting date", date),
            )
        )
        return text, field, answer

    def _incident_text(self, difficulty: str) -> tuple[str, str, str]:
        org = self.any_org()
        city = self.pick(CITIES)
        case = self.code("CASE-", 6)
        incident = self.pick(
            (
                "an unauthorised login from an unknown device",
                "a ransomware note on a file server",
                "a missing pallet of network switches",
                "a spoofed invoice for 48,000 EUR",
                "a phishing wave aimed at its finance team",
            )
        )
        text = f"{poss(org.name)} office in {city} reported {incident}. Case reference {case}."
        if difficulty == "hard":
            old_case = self.code("CASE-", 6)
            text += f" It may be linked to {old_case}, closed last spring."
            field, answer = self.pick_pair(
                (("new case reference", case), ("city of the reporting office", city))
            )
            return text, field, answer
        field, answer = self.pick_pair(
            (("case reference", case), ("city", city), ("organization", org.name))
        )
        return text, field, answer

    def _contact_text(self, difficulty: str) -> tuple[str, str, str]:
        person = self.person()
        customer = self.code("CUST-", 6)
        text = self.pick(
            (
                f"Hi, this is {person.name}. You can reach me at {person.email} or on "
                f"{person.phone}. My customer number is {customer}.",
                f"Contact card: {person.name}; e-mail {person.email}; phone {person.phone}; "
                f"account {customer}.",
                f"Please call {person.name} back on {person.phone} (or write to {person.email}) "
                f"about account {customer}.",
            )
        )
        if difficulty == "hard":
            colleague = self.person()
            while colleague == person:
                colleague = self.person()
            text += f" Copy {colleague.name} at {colleague.email} on the reply."
            field, answer = self.pick_pair(
                (
                    (f"e-mail address of {person.name}", person.email),
                    ("phone number", person.phone),
                    ("customer number", customer),
                )
            )
            return text, field, answer
        field, answer = self.pick_pair(
            (
                ("e-mail address", person.email),
                ("phone number", person.phone),
                ("customer number", customer),
                ("name of the person", person.name),
            )
        )
        return text, field, answer

    # -- classification ------------------------------------------------------------------------

    def classification(self, difficulty: str, pii: bool) -> Row:
        task = self.pick(("sentiment", "intent", "topic"))
        if task == "sentiment":
            message, label = self._sentiment(difficulty)
            instruction = self.pick(
                (
                    "Classify the sentiment of this message as positive, negative or neutral. "
                    "Reply with the label only.",
                    "Is the following feedback positive, negative or neutral? One word.",
                    "Label the tone of the message: positive, negative or neutral.",
                )
            )
        elif task == "intent":
            message, label = self._intent(difficulty)
            labels = ", ".join(INTENTS)
            instruction = self.pick(
                (
                    f"Classify the customer's intent as one of: {labels}. Reply with the label.",
                    f"Which intent fits this message best ({labels})? Answer with the label only.",
                )
            )
        else:
            message, label = self._topic(difficulty)
            labels = ", ".join(TOPICS)
            instruction = self.pick(
                (
                    f"Assign this report to one category: {labels}. Reply with the category.",
                    f"Which desk should handle this report ({labels})? Give the category only.",
                )
            )
        if pii:
            person = self.person()
            message += self.pick(
                (
                    f" — {person.name}, {person.phone}",
                    f" (sent by {person.email})",
                    f" Regards, {person.name} <{person.email}>",
                    f" Employee ID {self.code('EMP-', 5)}, {person.name}.",
                )
            )
        return {"input": f"{instruction}\n\nMessage: {message}", "expected": label}

    def _sentiment(self, difficulty: str) -> tuple[str, str]:
        subject = self.pick(SUBJECTS)
        label = self.pick(("positive", "negative", "neutral"))
        if difficulty == "hard":
            text, label = self.pick_pair(
                (
                    (
                        f"Oh great, {subject} crashed again. Exactly what I needed today.",
                        "negative",
                    ),
                    (
                        f"I was sceptical at first and the setup took a while, but {subject} "
                        "has saved our team hours every week.",
                        "positive",
                    ),
                    (
                        f"Not bad at all: {subject} finally does what the brochure promised.",
                        "positive",
                    ),
                    (
                        f"Sure, {subject} looks nice. Shame it loses half of our records.",
                        "negative",
                    ),
                    (
                        f"{subject.capitalize()} has both fans and critics here; I have no view "
                        "either way yet.",
                        "neutral",
                    ),
                )
            )
            return text, label
        phrases = {
            "positive": (
                f"{subject.capitalize()} is excellent, thank you!",
                f"Really happy with {subject}; it works beautifully.",
                f"Big improvement with {subject}, the team loves it.",
            ),
            "negative": (
                f"{subject.capitalize()} is broken and nobody answers my tickets.",
                f"Very disappointed with {subject}; it keeps failing.",
                f"{subject.capitalize()} wasted a full afternoon of my time.",
            ),
            "neutral": (
                f"{subject.capitalize()} was updated on Tuesday.",
                f"I used {subject} this morning for the weekly report.",
                f"Noting that {subject} is scheduled for review next month.",
            ),
        }
        text = self.pick(phrases[label])
        if difficulty == "medium":
            text += " " + self.pick(
                (
                    f"Ticket {self.code('TCK-', 5)} has the details.",
                    f"We have {self.rng.randint(3, 40)} analysts using it.",
                    f"This is about the {self.pick(CITIES)} office.",
                )
            )
        return text, label

    def _intent(self, difficulty: str) -> tuple[str, str]:
        label = self.pick(INTENTS)
        amount = self.rng.randint(12, 990)
        order = self.code("ORD-", 5)
        options = {
            "billing": (
                f"I was charged {amount} USD twice this month; please refund one payment.",
                f"Why does invoice {self.code('INV-', 6)} show {amount} EUR more than agreed?",
                "Can you change the card you bill for our subscription?",
            ),
            "technical_issue": (
                f"The export to CSV fails with error {self.rng.randint(400, 599)} every time.",
                "Graph view stays blank after the latest update.",
                f"Search has been timing out since {self.pick(MONTHS)} for all of our users.",
            ),
            "cancellation": (
                "Please cancel our plan at the end of this billing period.",
                f"We want to close the account and stop order {order}.",
                "How do I terminate the contract? We are moving to another vendor.",
            ),
            "account_access": (
                "I'm locked out after too many password attempts.",
                "My two-factor codes stopped arriving; I cannot log in.",
                f"Please reset the password of our shared analyst login in {self.pick(CITIES)}.",
            ),
            "shipping_status": (
                f"Where is order {order}? It was due {self.rng.randint(2, 9)} days ago.",
                f"Has {order} left the warehouse yet?",
                f"Tracking for {order} hasn't updated since {self.pick(MONTHS)}.",
            ),
        }
        text = self.pick(options[label])
        if difficulty != "easy":
            text = (
                self.pick(
                    (
                        "Hello team, quick one. ",
                        "Following up on my earlier e-mail. ",
                        "Sorry to bother you again. ",
                    )
                )
                + text
            )
        if difficulty == "hard":
            # A sentence that touches another intent, never the one that fits.
            text += self.pick(
                [
                    aside
                    for aside, other in (
                        (" The invoice itself looks right.", "billing"),
                        (" Delivery was on time, by the way.", "shipping_status"),
                        (" Logging in works fine.", "account_access"),
                        (" We are happy to stay on as customers.", "cancellation"),
                        (" Everything else works as expected.", "technical_issue"),
                    )
                    if other != label
                ]
            )
        return text, label

    def _topic(self, difficulty: str) -> tuple[str, str]:
        label = self.pick(TOPICS)
        org, city = self.any_org(), self.pick(CITIES)
        vessel = self.vessel()
        options = {
            "cyber": (
                f"{org.name} saw credential-stuffing attempts against its VPN from {city}.",
                f"Malware beaconing to a server in {city} was found on two {org.name} laptops.",
            ),
            "maritime": (
                f"The {vessel} switched off its transponder for nine hours near {city}.",
                f"A ship-to-ship transfer involving the {vessel} was observed off {city}.",
            ),
            "finance": (
                f"{org.name} moved {grouped(self.rng.randint(2, 90) * 10_000)} USD through "
                f"three shell accounts in {city}.",
                f"Unusual dividend payments left {org.name} for a trust registered in {city}.",
            ),
            "supply_chain": (
                f"{poss(org.name)} only chip supplier in {city} halted production for a month.",
                f"Pallets bound for {org.name} sat in a {city} warehouse for six weeks.",
            ),
        }
        text = self.pick(options[label])
        if difficulty == "hard":
            text += self.pick(
                [
                    aside
                    for aside, other in (
                        (" The payment side looks routine.", "finance"),
                        (" No vessels are involved.", "maritime"),
                        (" No systems were breached.", "cyber"),
                        (" Deliveries are unaffected.", "supply_chain"),
                    )
                    if other != label
                ]
            )
        return text, label

    # -- arithmetic ----------------------------------------------------------------------------

    def arithmetic(self, difficulty: str, pii: bool) -> Row:
        suffix = self.pick(
            (" Answer with the number only.", " Give just the number.", " Reply with a number.")
        )
        if pii:
            question, answer = self._arithmetic_pii(difficulty)
        elif difficulty == "easy":
            question, answer = self._arithmetic_easy()
        elif difficulty == "medium":
            question, answer = self._arithmetic_medium()
        else:
            question, answer = self._arithmetic_hard()
        return {"input": question + suffix, "expected": number_text(answer)}

    def _arithmetic_easy(self) -> tuple[str, Fraction]:
        r = self.rng
        analyst = self.person().name.split(" ")[0]
        a, b = r.randint(12, 480), r.randint(5, 390)
        form = r.randrange(4)
        if form == 0:
            return (
                f"{analyst} tagged {a} entities on Monday and {b} on Tuesday. How many did "
                f"{analyst} tag in total?",
                Fraction(a + b),
            )
        if form == 1:
            big, small = max(a, b) + 50, min(a, b)
            return (
                f"A watchlist had {big} names; {small} were removed after review. How many "
                "names remain?",
                Fraction(big - small),
            )
        if form == 2:
            n, k = r.randint(3, 19), r.randint(4, 36)
            return (
                f"Each of {n} field reports lists {k} sightings. How many sightings is that?",
                Fraction(n * k),
            )
        total, parts = r.randint(4, 30), r.randint(2, 9)
        return (
            f"{total * parts} documents are split evenly among {parts} analysts. How many does "
            "each analyst get?",
            Fraction(total),
        )

    def _arithmetic_medium(self) -> tuple[str, Fraction]:
        r = self.rng
        form = r.randrange(4)
        if form == 0:
            n, k, d = r.randint(3, 12), r.randint(6, 45), r.randint(2, 7)
            return (
                f"{n} analysts each review {k} reports a day. How many reports do they review in "
                f"{d} days?",
                Fraction(n * k * d),
            )
        if form == 1:
            shards, per = r.randint(3, 9), r.randint(40, 400)
            dupes = r.randint(10, 300)
            return (
                f"A crawler fetched {shards * per + dupes} pages, {dupes} of which were "
                f"duplicates. The rest were split evenly across {shards} shards. How many pages "
                "went to each shard?",
                Fraction(per),
            )
        if form == 2:
            values = [r.randint(10, 99) for _ in range(r.randint(3, 5))]
            values[-1] += (-sum(values)) % len(values)
            listed = ", ".join(map(str, values[:-1])) + f" and {values[-1]}"
            return (
                f"A sensor logged {listed} alerts on consecutive days. What was the average "
                "number of alerts per day?",
                Fraction(sum(values), len(values)),
            )
        price, qty, fee = r.randint(3, 60), r.randint(4, 25), r.randint(5, 90)
        return (
            f"A team buys {qty} licences at {price} USD each and pays a one-off setup fee of "
            f"{fee} USD. What is the total cost in USD?",
            Fraction(price * qty + fee),
        )

    def _arithmetic_hard(self) -> tuple[str, Fraction]:
        r = self.rng
        form = r.randrange(4)
        if form == 0:
            base = r.randrange(200, 5000, 20)
            up, down = r.choice((10, 20, 25, 50)), r.choice((10, 20, 25, 40))
            value = Fraction(base) * Fraction(100 + up, 100) * Fraction(100 - down, 100)
            return (
                f"A monthly data feed costs {grouped(base)} USD. The price rises by {up}%, and "
                f"then a {down}% discount is applied to the new price. What is the monthly "
                "cost now, in USD?",
                value,
            )
        if form == 1:
            n, mean = r.randint(4, 12), r.randint(20, 80)
            new_mean = mean + r.randint(1, 6)
            return (
                f"The average of {n} risk scores is {mean}. After one more score is added, the "
                f"average is {new_mean}. What was the added score?",
                Fraction(new_mean * (n + 1) - n * mean),
            )
        if form == 2:
            speed, minutes = r.choice((36, 48, 60, 72, 90, 120)), r.choice((15, 20, 25, 40, 45))
            return (
                f"A survey drone flies at {speed} km/h for {minutes} minutes. How many "
                "kilometres does it cover?",
                Fraction(speed * minutes, 60),
            )
        total = r.randrange(400, 9000, 40)
        share_a, share_b = r.choice(((25, 40), (10, 30), (20, 45), (15, 35)))
        return (
            f"Of {grouped(total)} flagged transactions, {share_a}% were confirmed fraud and "
            f"{share_b}% were false alarms; the rest are still open. How many are still open?",
            Fraction(total * (100 - share_a - share_b), 100),
        )

    def _arithmetic_pii(self, difficulty: str) -> tuple[str, Fraction]:
        r = self.rng
        person = self.person()
        who = self.pick(
            (
                f"Customer {person.name} ({person.email})",
                f"The account holder, {person.name}, phone {person.phone},",
                f"Client {self.code('CUST-', 6)} ({person.email})",
            )
        )
        qty, price = r.randint(2, 14), r.randint(9, 120)
        if difficulty == "easy":
            return (
                f"{who} bought {qty} licences at {price} USD each. How much was charged in USD?",
                Fraction(qty * price),
            )
        returned = r.randint(1, qty - 1)
        if difficulty == "medium":
            return (
                f"{who} ordered {qty} seats at {price} USD each and later returned {returned}. "
                "How much should be charged in USD?",
                Fraction((qty - returned) * price),
            )
        discount = r.choice((10, 20, 25, 50))
        return (
            f"{who} ordered {qty} seats at {price} USD each, returned {returned}, and gets "
            f"{discount}% off the rest. What is the final charge in USD?",
            Fraction((qty - returned) * price * (100 - discount), 100),
        )

    # -- tool use ------------------------------------------------------------------------------

    def tool_use(self, difficulty: str, pii: bool) -> Row:
        if pii:
            text, calls = self._tool_pii(difficulty)
        else:
            make = self.pick_tool_fn()
            text, calls = make(difficulty)
        needed = list(dict.fromkeys(call["name"] for call in calls))
        offered = list(needed)
        if difficulty == "medium":
            others = [n for n in TOOLS if n not in needed]
            offered += self.rng.sample(others, self.rng.randint(1, 2))
        elif difficulty == "hard":
            offered = list(TOOLS)
        self.rng.shuffle(offered)
        return {
            "input": text,
            "tools": [TOOLS[name] for name in offered],
            "expected_tool_calls": calls,
        }

    def pick_tool_fn(self) -> Callable[[str], tuple[str, list[Row]]]:
        options: tuple[Callable[[str], tuple[str, list[Row]]], ...] = (
            self._tool_order,
            self._tool_weather,
            self._tool_search,
            self._tool_currency,
        )
        return options[self.rng.randrange(len(options))]

    def _tool_order(self, difficulty: str) -> tuple[str, list[Row]]:
        order = self.code("ORD-", 5)
        call = {"name": "lookup_order", "arguments": {"order_id": order}}
        if difficulty == "hard":
            other = self.code("ORD-", 5)
            if self.rng.random() < 0.5:
                return (
                    f"I placed two orders last week. {other} arrived fine; the one I'm worried "
                    f"about is {order}. Where is it?",
                    [call],
                )
            return (
                f"Please check both {order} and {other} for me; neither has shown up.",
                [call, {"name": "lookup_order", "arguments": {"order_id": other}}],
            )
        return (
            self.pick(
                (
                    f"Where is my order {order}?",
                    f"Can you check the status of order {order}?",
                    f"Has {order} shipped yet?",
                    f"Any update on {order}? It was due on {self.date()}.",
                )
            ),
            [call],
        )

    def _tool_weather(self, difficulty: str) -> tuple[str, list[Row]]:
        city = self.pick(CITIES)
        unit = self.pick(("celsius", "fahrenheit"))
        said = self.pick(
            {
                "celsius": ("in Celsius", "in °C", "in degrees Celsius"),
                "fahrenheit": ("in Fahrenheit", "in °F", "in degrees Fahrenheit"),
            }[unit]
        )
        call = {"name": "get_weather", "arguments": {"city": city, "unit": unit}}
        if difficulty == "hard":
            origin = self.pick(CITIES)
            while origin == city:
                origin = self.pick(CITIES)
            if self.rng.random() < 0.5:
                return (
                    f"I'm flying from {origin} to {city} on {self.date()}. What's the weather at "
                    f"my destination, {said}?",
                    [call],
                )
            return (
                f"Compare the weather in {origin} and {city} right now, both {said}.",
                [{"name": "get_weather", "arguments": {"city": origin, "unit": unit}}, call],
            )
        return (
            self.pick(
                (
                    f"What's the weather in {city} right now, {said}?",
                    f"How warm is it in {city} today? Give it {said}.",
                    f"Weather check for {city} please, {said}.",
                    f"Our team lands in {city} tonight; current conditions {said}?",
                )
            ),
            [call],
        )

    def _tool_search(self, difficulty: str) -> tuple[str, list[Row]]:
        kind = self.pick(("person", "organization", "location", "vessel"))
        name = {
            "person": self.person().name,
            "organization": self.any_org().name,
            "location": self.pick(CITIES),
            "vessel": self.vessel(),
        }[kind]
        call = {"name": "search_entities", "arguments": {"name": name, "kind": kind}}
        if difficulty == "easy":
            text = self.pick(
                (
                    f"Search the graph for the {kind} {name}.",
                    f"Find the {kind} named {name} in the entity graph.",
                    f"Look up {name} ({kind}).",
                )
            )
            return text, [call]
        described = {
            "person": (
                f"Who is {name}? Pull their profile from the graph.",
                f"Check whether we have anything on {name}; the name came up in a call log.",
            ),
            "organization": (
                f"What do we know about the company {name}?",
                f"Pull up the graph entry for the firm {name}.",
            ),
            "location": (
                f"Show me what the graph holds on the city of {name}.",
                f"Anything linked to {name} as a place? Search the graph.",
            ),
            "vessel": (
                f"Find the ship {name} in the graph.",
                f"We saw the tanker {name} near the strait; search for it.",
            ),
        }[kind]
        text = self.pick(described)
        if difficulty == "hard":
            text = (
                self.pick(
                    (
                        "Before the 3 pm briefing: ",
                        f"For case {self.code('CASE-', 6)}: ",
                        "Urgent, for the morning summary. ",
                    )
                )
                + text
            )
        return text, [call]

    def _tool_currency(self, difficulty: str) -> tuple[str, list[Row]]:
        (src, src_name), (dst, dst_name) = self.rng.sample(CURRENCIES, 2)
        if difficulty == "hard":
            amount = Fraction(self.rng.randrange(1000, 250_000, 5), 100)
        else:
            amount = Fraction(self.rng.randrange(5, 50_000, 5))
        value: int | float = (
            amount.numerator if amount.denominator == 1 else float(number_text(amount))
        )
        shown = (
            grouped(amount.numerator)
            if amount.denominator == 1
            else f"{grouped(int(amount))}.{int(amount * 100) % 100:02d}"
        )
        call = {"name": "convert_currency", "arguments": {"amount": value, "from": src, "to": dst}}
        if difficulty == "easy":
            text = self.pick(
                (
                    f"Convert {shown} {src} to {dst}.",
                    f"What is {shown} {src} in {dst}?",
                    f"{shown} {src} to {dst}, please.",
                )
            )
        else:
            text = self.pick(
                (
                    f"How much is {shown} {src_name} in {dst_name}?",
                    f"A supplier invoiced {shown} {src_name}. What is that in {dst_name}?",
                    f"We owe {shown} {src_name}; convert it to {dst_name} at today's rate.",
                )
            )
        return text, [call]

    def _tool_pii(self, difficulty: str) -> tuple[str, list[Row]]:
        person = self.person()
        form = self.rng.randrange(3)
        if form == 0:
            call = {"name": "lookup_customer", "arguments": {"email": person.email}}
            text = self.pick(
                (
                    f"Find the customer record for {person.email}.",
                    f"A caller on {person.phone} says their e-mail is {person.email}; pull up "
                    "their account.",
                    f"Who is the customer behind {person.email}? Check the records.",
                )
            )
            return text, [call]
        if form == 1:
            order = self.code("ORD-", 5)
            call = {"name": "lookup_order", "arguments": {"order_id": order}}
            text = self.pick(
                (
                    f"Hi, I'm {person.name} ({person.email}). Where is order {order}?",
                    f"This is {person.name}, phone {person.phone}. Can you check {order}?",
                    f"My employee ID is {self.code('EMP-', 5)}; please look up order {order}.",
                )
            )
            return text, [call]
        call = {"name": "search_entities", "arguments": {"name": person.name, "kind": "person"}}
        text = self.pick(
            (
                f"Search the graph for the person {person.name}; their e-mail is {person.email}.",
                f"Look up {person.name} (phone {person.phone}) as a person in the graph.",
            )
        )
        if difficulty == "hard":
            text += " Don't share the contact details in the answer."
        return text, [call]


SUBJECTS = (
    "the new dashboard",
    "yesterday's briefing",
    "the export feature",
    "the onboarding call",
    "the graph search",
    "the mobile app",
    "the alerting rules",
    "the entity resolution update",
    "the weekly digest",
    "the support desk",
)
INTENTS = ("billing", "technical_issue", "cancellation", "account_access", "shipping_status")
TOPICS = ("cyber", "maritime", "finance", "supply_chain")


def input_text(row: Row) -> str:
    value = row["input"]
    if isinstance(value, str):
        return value
    users = [m["content"] for m in value if m["role"] == "user"]
    return str(users[-1])


def as_chat(factory: Factory, row: Row, kind: str) -> None:
    """Turn some string inputs into chat messages: a system prompt, sometimes an earlier turn."""
    roll = factory.rng.random()
    if roll >= (0.45 if kind == "tool_use" else 0.25):
        return
    messages = [{"role": "system", "content": factory.pick(SYSTEM_PROMPTS)}]
    if kind == "tool_use" and roll < 0.12:
        messages += [
            {"role": "user", "content": "I need a hand with something."},
            {"role": "assistant", "content": "Of course. What do you need?"},
        ]
    messages.append({"role": "user", "content": row["input"]})
    row["input"] = messages


def make_task(factory: Factory, kind: str, difficulty: str, pii: bool) -> Row:
    make: Callable[[str, bool], Row] = getattr(factory, kind)
    for _ in range(500):
        row = make(difficulty, pii)
        if row.get("expected") == "":
            continue  # a template that produced nothing to grade; draw again
        text = input_text(row)
        if text not in factory.used_inputs:
            factory.used_inputs.add(text)
            as_chat(factory, row, kind)
            return row
    raise RuntimeError(f"could not draw a unique {kind}/{difficulty} task")


def plan_slots(plan: DatasetPlan, rng: random.Random) -> list[tuple[str, str, bool]]:
    slots: list[tuple[str, str]] = []
    for kind in KINDS:
        count = plan.kinds[kind]
        easy = round(count * plan.difficulty_shares[0] / 100)
        hard = round(count * plan.difficulty_shares[2] / 100)
        levels = ["easy"] * easy + ["hard"] * hard + ["medium"] * (count - easy - hard)
        rng.shuffle(levels)
        slots += [(kind, level) for level in levels]
    pii = set(rng.sample(range(len(slots)), plan.pii))
    return [(kind, level, index in pii) for index, (kind, level) in enumerate(slots)]


def build_rows(plan: DatasetPlan, factory: Factory) -> list[Row]:
    rows: list[Row] = []
    numbers = dict.fromkeys(KINDS, 0)
    for kind, difficulty, pii in plan_slots(plan, factory.rng):
        row = make_task(factory, kind, difficulty, pii)
        numbers[kind] += 1
        row["id"] = f"{plan.id_prefix}.{kind.replace('_', '-')}.{numbers[kind]:04d}"
        row["slices"] = {
            "kind": kind,
            "difficulty": difficulty,
            "tool": "yes" if row.get("expected_tool_calls") else "no",
            "pii": "yes" if pii else "no",
        }
        if pii:
            row["tags"] = ["pii"]
        rows.append(row)
    return rows


def jsonl(rows: Sequence[Row]) -> bytes:
    lines = [
        json.dumps(row, sort_keys=True, ensure_ascii=False, separators=(",", ":")) for row in rows
    ]
    return ("\n".join(lines) + "\n").encode("utf-8")


def manifest(plan: DatasetPlan, data: bytes, rows: Sequence[Row]) -> str:
    digest = hashlib.sha256(data).hexdigest()
    counts: dict[str, dict[str, int]] = {}
    for row in rows:
        for key, value in row["slices"].items():
            counts.setdefault(key, {})
            counts[key][value] = counts[key].get(value, 0) + 1
    document = {
        "name": plan.name,
        "file": plan.file,
        "sha256": digest,
        "rows": len(rows),
        "size_bytes": len(data),
        "schema": SCHEMA_ID,
        "provenance_id": "prov-" + hashlib.sha256((plan.name + digest).encode()).hexdigest()[:16],
        "generator": GENERATOR,
        "generator_seed": SEED,
        "slices": {k: dict(sorted(v.items())) for k, v in sorted(counts.items())},
    }
    return json.dumps(document, sort_keys=True, indent=2, ensure_ascii=False) + "\n"


def generate(seed: int = SEED) -> dict[str, bytes]:
    """Every output file by name: the JSONL datasets and their manifests."""
    factory = Factory(random.Random(seed))
    files: dict[str, bytes] = {}
    for plan in PLANS:
        rows = build_rows(plan, factory)
        data = jsonl(rows)
        files[plan.file] = data
        stem = plan.file.removesuffix(".jsonl")
        files[f"{stem}.manifest.json"] = manifest(plan, data, rows).encode("utf-8")
    return files


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).resolve().parent / "tasks", help="folder"
    )
    parser.add_argument(
        "--check", action="store_true", help="compare with --out instead of writing"
    )
    args = parser.parse_args(argv)
    out: Path = args.out
    files = generate()
    stale = [name for name, data in files.items() if _read(out / name) != data]
    if args.check:
        for name in stale:
            print(f"{out / name}: differs from a fresh run of {GENERATOR}", file=sys.stderr)
        return 1 if stale else 0
    for name in stale:
        if name.endswith(".manifest.json"):
            old = _read(out / name)
            new = json.loads(files[name])
            if old is not None and json.loads(old).get("name") == new["name"]:
                print(
                    f"{out / name}: {new['name']} is published with other content; versions "
                    "are immutable, so bump the version in its name (DatasetPlan.name)",
                    file=sys.stderr,
                )
                return 1
    out.mkdir(parents=True, exist_ok=True)
    for name in stale:
        (out / name).write_bytes(files[name])
    for name, data in files.items():
        print(f"{out / name}: {len(data)} bytes{'' if name in stale else ' (unchanged)'}")
    return 0


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


if __name__ == "__main__":
    sys.exit(main())
