"""The tiny BLIP-2: the real Blip2ForConditionalGeneration (vision tower, Q-Former, OPT) trained on the shapes world."""
