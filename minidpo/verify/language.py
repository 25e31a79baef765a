"""Which language a text is in, by `langdetect` (its language profiles ship inside the wheel: nothing is
downloaded). IFEval uses the same library for response_language, english_lowercase and english_capital."""

from __future__ import annotations

from minidpo.errors import ConfigError

# ISO 639-1 codes IFEval's prompts ask for, with the names a prompt writes.
LANGUAGES = {
    "en": "English", "es": "Spanish", "pt": "Portuguese", "ar": "Arabic", "hi": "Hindi", "fr": "French",
    "ru": "Russian", "de": "German", "ja": "Japanese", "it": "Italian", "bn": "Bengali", "uk": "Ukrainian",
    "th": "Thai", "ur": "Urdu", "ta": "Tamil", "te": "Telugu", "bg": "Bulgarian", "ko": "Korean",
    "pl": "Polish", "he": "Hebrew", "fa": "Persian", "vi": "Vietnamese", "ne": "Nepali", "sw": "Swahili",
    "kn": "Kannada", "mr": "Marathi", "gu": "Gujarati", "pa": "Punjabi", "ml": "Malayalam", "fi": "Finnish",
}


def detect_language(text: str) -> str | None:
    """The ISO 639-1 code langdetect gives `text` ("zh-cn" style for Chinese), or None where it cannot tell
    (no letters at all); IFEval counts such a text as following the instruction. Deterministic (seed 0)."""
    try:
        import langdetect  # optional dependency: only the three checks that look at the language need it
    except ImportError:
        raise ConfigError("the language checks (language:response_language, change_case:english_lowercase, "
                          "change_case:english_capital) need the langdetect package: pip install langdetect") from None
    langdetect.DetectorFactory.seed = 0  # langdetect samples; a fixed seed gives the same verdict every run
    try:
        return langdetect.detect(text)
    except langdetect.LangDetectException:
        return None
