"""The base tasks and word lists of our own training prompts (written here; none comes from IFEval, whose
prompts are a held-out benchmark). Each task is one sentence without a comma, so it can be quoted back."""

from __future__ import annotations

TASKS = (
    "Write a short story about a lighthouse keeper who finds a message in a bottle.",
    "Explain how a bicycle gear system makes climbing hills easier.",
    "Describe a busy morning at a small bakery.",
    "Write a letter to a neighbour asking to borrow a ladder.",
    "Explain why the sky looks blue on a clear day.",
    "Give advice to someone starting their first vegetable garden.",
    "Write a poem about the first snowfall of winter.",
    "Describe how to make a simple tomato soup.",
    "Explain what a library card lets you do.",
    "Write a product description for a reusable water bottle.",
    "Summarize the life cycle of a butterfly.",
    "Write a thank-you note to a teacher who helped you learn to read.",
    "Explain how a refrigerator keeps food cold.",
    "Describe a walk through a pine forest after rain.",
    "Give tips for packing a suitcase for a weekend trip.",
    "Write a short speech welcoming new members to a chess club.",
    "Explain the difference between weather and climate.",
    "Write a diary entry from the point of view of a house cat.",
    "Describe how bees make honey.",
    "Plan a relaxing Sunday for a family with two young children.",
    "Explain how to change a flat tyre on a bicycle.",
    "Write a review of an imaginary restaurant that serves only soup.",
    "Describe the view from the top of a mountain at sunrise.",
    "Explain why people need sleep.",
    "Write an announcement for a community book swap.",
    "Give three reasons to learn a musical instrument.",
    "Explain how a compass works.",
    "Write a fable about a patient tortoise and a clever crow.",
    "Describe what a firefighter does during a typical shift.",
    "Explain how recycling paper saves resources.",
    "Write an invitation to a neighbourhood picnic.",
    "Describe the sounds of a city at night.",
    "Explain how to brew a good cup of tea.",
    "Write a short biography of an imaginary inventor named Lena Ortiz.",
    "Explain how rainbows form.",
    "Give advice to a student preparing for an exam.",
    "Describe a train journey through the countryside.",
    "Write a job advertisement for a zookeeper.",
    "Explain what a budget is and why it helps.",
    "Write a short story about a robot learning to paint.",
    "Describe how to care for a houseplant.",
    "Explain how the moon causes tides.",
    "Write a message to a friend who just moved to a new city.",
    "Describe a traditional market on a Saturday morning.",
    "Explain how vaccines help the body fight illness.",
    "Write a lullaby for a sleepy puppy.",
    "Give instructions for folding a paper airplane.",
    "Explain why exercise is good for the heart.",
    "Write a postcard from a holiday at the seaside.",
    "Describe the job of a museum guide.",
    "Explain how solar panels turn sunlight into electricity.",
    "Write a short mystery about a missing umbrella.",
    "Give tips for staying focused while working from home.",
    "Describe the taste of a ripe summer peach.",
    "Explain how a library organizes its books.",
    "Write a complaint to a shop about a broken kettle.",
    "Describe a thunderstorm seen from a window.",
    "Explain how birds know where to migrate.",
    "Write a motivational note for a team before a big match.",
    "Describe how a potter makes a bowl on a wheel.",
    "Explain why oceans are salty.",
    "Write a story about two friends building a treehouse.",
    "Give advice on how to make a good first impression at a new job.",
    "Describe an old clock shop and its owner.",
    "Explain how a hot air balloon rises.",
    "Write a menu description for a new pancake cafe.",
    "Explain how to plan a simple monthly meal schedule.",
    "Describe a quiet afternoon in a village square.",
    "Write a short guide to watching the stars without a telescope.",
    "Explain how a river changes the land around it.",
    "Write a welcome message for visitors to a botanical garden.",
    "Describe the daily routine of a lighthouse cat.",
)

# Yes-or-no questions for the constrained-response instruction.
QUESTIONS = (
    "Is it worth learning to cook simple meals as a teenager?",
    "Should every town have a public swimming pool?",
    "Can a houseplant survive in a room without windows?",
    "Is walking to work better than driving for short distances?",
    "Should schools teach children how to manage money?",
    "Is it a good idea to read before going to sleep?",
    "Can a person learn a new language after the age of sixty?",
    "Should museums be free for everyone?",
    "Is tea a healthier drink than soda?",
    "Would a four-day school week help students learn?",
    "Is it safe to swim right after eating lunch?",
    "Should cities plant more trees along their streets?",
    "Is handwriting still a useful skill today?",
    "Can board games help children learn maths?",
    "Should people repair old phones instead of buying new ones?",
    "Is it better to travel by train than by plane in Europe?",
)

# Words the keyword instructions ask for, forbid or count.
KEYWORDS = (
    "river", "lantern", "harvest", "journey", "silver", "garden", "window", "thunder", "anchor", "candle",
    "meadow", "compass", "whisper", "orchard", "bridge", "canvas", "harbor", "feather", "puzzle", "ribbon",
    "kettle", "valley", "mirror", "pebble", "festival", "blanket", "market", "island", "engine", "season",
)
# Words an answer would use without thinking, for "do not use" and "use fewer than".
COMMON_WORDS = ("very", "really", "also", "just", "good", "important", "many", "because", "people", "thing",
                "great", "make", "like", "some", "time", "way", "help", "easy", "simple", "best")
FIRST_WORDS = ("however", "first", "today", "finally", "imagine", "meanwhile", "overall", "interestingly",
               "sometimes", "luckily", "next", "remember", "often", "surprisingly")
END_PHRASES = ("That is all for now.", "Thank you for reading.", "Let me know what you think.", "Hope this helps!",
               "Stay curious.", "Have a wonderful day!", "Feel free to ask more questions.",
               "And that is the whole story.")
SECTION_WORDS = ("Section", "SECTION", "Part", "PART", "Chapter", "Step")
COMMON_LETTERS = "aeinorst"
RARE_LETTERS = "jqxz"
POSTSCRIPT_MARKERS = ("P.S.", "P.P.S")
# Languages a training prompt may ask for (ISO 639-1 codes known to minidpo.verify.language.LANGUAGES).
TRAIN_LANGUAGES = ("es", "fr", "de", "it", "pt", "ru", "ja", "ko", "hi", "ar", "pl", "vi", "fi", "sw")
