"""Teachers: trained, fine-tuned or pretrained, cached once; and their cached outputs."""
