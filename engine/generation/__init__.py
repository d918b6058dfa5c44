"""Generation: the one pipeline builder, image-oriented img2img and masked repaint, placement, varied inits."""
