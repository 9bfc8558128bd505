"""Chat conversations for ``bench.tokens``, generated from a seed: nothing is downloaded.

Each conversation has a system prompt built like the service's (the seed's universal rules,
then one seed personality) and alternating user and assistant messages drawn from one kind of
text: English small talk, code, numbers, European languages, other scripts, CJK, emoji, or a mix.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path

from services.llm.client import ChatMessage

SEED = Path(__file__).resolve().parent.parent / "templates_seed"

ENGLISH = [
    "Hey, how's it going?",
    "Not bad, I just got back from a run and I'm starving.",
    "What should I cook tonight? Something quick, I'm tired.",
    "A garlic and spinach pasta takes fifteen minutes and one pan.",
    "That sounds great, thanks! Do I need parmesan?",
    "Can you recommend a good book for a long flight?",
    "I'm a bit stressed about my exam tomorrow, to be honest.",
    "You've prepared well; get some sleep and skim your notes in the morning.",
    "Do you think it'll rain this weekend? We wanted to go hiking.",
    "Pack a light jacket either way, mountain weather changes fast.",
    "My sister's birthday is on Friday and I still haven't got her anything.",
    "How about tickets to a show you could see together?",
    "lol that's actually a really good idea",
    "I can't decide between the blue one and the green one.",
    "Honestly? Go with the one you'd still wear in five years.",
    "Thanks, you're the best. Talk later!",
]
CODE = [
    "Why does this fail?\n```python\ndef mean(xs):\n    return sum(xs) / len(xs)\n\nmean([])\n```",
    "It raises ZeroDivisionError on an empty list. Guard it:\n```python\ndef mean(xs: list[float]"
    ") -> float | None:\n    return sum(xs) / len(xs) if xs else None\n```",
    "```js\nconst res = await fetch(`/api/users/${id}`);\n"
    "if (!res.ok) throw new Error(res.status);\nconst user = await res.json();\n```",
    "SELECT user_id, COUNT(*) AS turns FROM messages WHERE created_at >= '2026-01-01' "
    "GROUP BY user_id ORDER BY turns DESC LIMIT 10;",
    'Traceback (most recent call last):\n  File "app.py", line 42, in handler\n    '
    "payload = json.loads(body)\njson.decoder.JSONDecodeError: Expecting value: line 1 column 1",
    '{"model": "gpt-4o-mini", "temperature": 0.7, "messages": [{"role": "user", "content": "hi"}]}',
    'for i in range(10):\n    if i % 2 == 0:\n        continue\n    print(f"{i=}")',
    "git rebase -i HEAD~3 && git push --force-with-lease origin feature/token-counting",
    "Use a dict comprehension: `counts = {word: text.count(word) for word in set(words)}`.",
    '<div class="card">\n  <h2>{{ title }}</h2>\n  <p>{{ body | truncate(120) }}</p>\n</div>',
]
EUROPEAN = [
    "Salut ! Tu peux m'aider à préparer un voyage à Lyon le week-end prochain ?",
    "Bien sûr : réserve le train tôt, c'est beaucoup moins cher, et goûte les quenelles.",
    "Ich habe morgen ein Vorstellungsgespräch und bin ziemlich nervös.",
    "Das ist ganz normal. Bereite drei Beispiele aus deiner Erfahrung vor.",
    "¿Qué me recomiendas para aprender a tocar la guitarra en pocos meses?",
    "Practica veinte minutos cada día y aprende primero los acordes básicos.",
    "Oggi fa un caldo incredibile, non riesco a concentrarmi sul lavoro.",
    "Bebe bastante agua y haz pausas cortas cada hora.",
    "Merci beaucoup, c'est très gentil de ta part !",
    "Kannst du mir ein gutes Rezept für Apfelstrudel empfehlen?",
]
OTHER_SCRIPTS = [
    "Привет! Как у тебя дела? Я весь день готовился к экзамену.",
    "Отлично, что ты так стараешься. Не забудь хорошо выспаться перед экзаменом.",
    "مرحبا! هل يمكنك أن تقترح علي كتابا جيدا للقراءة في العطلة؟",
    "بالتأكيد، أنصحك برواية قصيرة وممتعة يمكنك إنهاؤها في يومين.",
    "नमस्ते! क्या आप मुझे हिंदी में एक छोटी कहानी सुना सकते हैं?",
    "ज़रूर, एक बार की बात है, एक छोटे से गाँव में एक बुद्धिमान किसान रहता था।",
    "Γεια σου! Τι καιρό κάνει σήμερα στην Αθήνα;",
    "שלום, אני צריך עזרה עם שיעורי הבית במתמטיקה.",
]
CJK = [
    "你好！今天天气怎么样？我想出去散步。",
    "今天阳光很好，适合去公园走走，记得带水。",
    "我最近工作压力很大，晚上总是睡不着。",
    "试着睡前一小时不看手机，做几次深呼吸。",
    "こんにちは！週末に京都へ行くんですが、おすすめの場所はありますか？",
    "伏見稲荷大社は朝早く行くと人が少なくて、とてもきれいですよ。",
    "日本語の勉強を始めたばかりです。漢字が難しいです。",
    "안녕하세요! 오늘 저녁 메뉴 좀 추천해 주세요.",
    "김치찌개는 어때요? 만들기도 쉽고 맛있어요.",
]
EMOJI = [
    "omg we won the match!!! 🎉🎉🏆",
    "Congrats!! 🥳👏 You totally earned it 💪",
    "feeling kinda 😴 today tbh",
    "Sending good vibes ☕️🌞✨ grab a coffee and take it slow",
    "my cat just knocked over my plant 😹🪴💀",
    "Classic cat behaviour 😂🐈 is the plant ok? 🌱",
    "❤️❤️❤️ thank you",
    "👍🏽 see you at 7 🍕🍻",
    "🇫🇷🇩🇪🇯🇵 which one should I visit first? ✈️",
]


# The cookbook's example ("How to count tokens with tiktoken", section 6), with the counts the
# OpenAI API itself reported for it: 129 for gpt-3.5-turbo and gpt-4, 124 for gpt-4o(-mini).
COOKBOOK_MESSAGES: list[ChatMessage] = [
    {
        "role": "system",
        "content": "You are a helpful, pattern-following assistant that translates corporate "
        "jargon into plain English.",
    },
    {
        "role": "system",
        "name": "example_user",
        "content": "New synergies will help drive top-line growth.",
    },
    {
        "role": "system",
        "name": "example_assistant",
        "content": "Things working well together will increase revenue.",
    },
    {
        "role": "system",
        "name": "example_user",
        "content": "Let's circle back when we have more bandwidth to touch base on opportunities "
        "for increased leverage.",
    },
    {
        "role": "system",
        "name": "example_assistant",
        "content": "Let's talk later when we're less busy about how to do better.",
    },
    {
        "role": "user",
        "content": "This late pivot means we don't have time to boil the ocean for the client "
        "deliverable.",
    },
]


def numbers(rng: random.Random) -> str:
    """A message full of figures: prices, dates, ids, arithmetic."""
    a, b = rng.randint(12, 9999), rng.randint(3, 999)
    forms = [
        f"My order #{rng.randint(10000, 99999)} cost ${rng.randint(1, 999)}."
        f"{rng.randint(0, 99):02d} on 2026-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}.",
        f"What is {a} × {b}? And {a} / {b}?",
        f"{a} × {b} = {a * b:,}, and {a} / {b} ≈ {a / b:.4f}.",
        f"Call me at +1 555 {rng.randint(100, 999)} {rng.randint(1000, 9999)} after 6:30 pm.",
        f"Coordinates: {rng.uniform(-90, 90):.5f}, {rng.uniform(-180, 180):.5f}",
        f"The invoice total is {rng.randint(1000, 99999):,}.{rng.randint(0, 99):02d} EUR, "
        f"VAT {rng.randint(5, 25)} %.",
        f"I ran {rng.uniform(3, 42):.2f} km in {rng.randint(15, 240)} minutes.",
    ]
    return rng.choice(forms)


def _from(bank: list[str]) -> Callable[[random.Random], str]:
    return lambda rng: rng.choice(bank)


KINDS: dict[str, Callable[[random.Random], str]] = {
    "English small talk": _from(ENGLISH),
    "code": _from(CODE),
    "numbers": numbers,
    "French, German, Spanish, Italian": _from(EUROPEAN),
    "Cyrillic, Arabic, Hindi, Greek, Hebrew": _from(OTHER_SCRIPTS),
    "Chinese, Japanese, Korean": _from(CJK),
    "emoji": _from(EMOJI),
}


def _mixed(rng: random.Random) -> str:
    return rng.choice(list(KINDS.values()))(rng)


KINDS["mixed"] = _mixed


def system_prompts() -> list[str]:
    """The seed's personalities, each behind the universal rules, as a session stores them."""
    rules = json.loads((SEED / "universal_rules.json").read_text())["rules"]
    prompts = []
    for path in sorted((SEED / "templates").glob("*.json")):
        prompts.append(f"{rules}\n\n{json.loads(path.read_text())['personalityPrompt']}")
    return prompts


def conversation(kind: str, rng: random.Random, *, turns: int, system: str) -> list[ChatMessage]:
    """A system prompt and ``turns`` user/assistant exchanges of one kind of text."""
    write = KINDS[kind]
    messages: list[ChatMessage] = [{"role": "system", "content": system}]
    for _ in range(turns):
        user = " ".join(write(rng) for _ in range(rng.randint(1, 2)))
        reply = " ".join(write(rng) for _ in range(rng.randint(1, 4)))
        messages += [{"role": "user", "content": user}, {"role": "assistant", "content": reply}]
    return messages


def prompts(messages: list[ChatMessage], *, window: int = 10) -> list[list[ChatMessage]]:
    """The prompt of each turn: the system prompt, the last ``window`` messages, the new one."""
    system, rest = messages[0], messages[1:]
    return [[system, *rest[max(0, t - window) : t], rest[t]] for t in range(0, len(rest), 2)]
