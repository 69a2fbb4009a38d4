"""Stage two and beyond: heads on cached features, fusing, fine-tuning, export, prediction."""
