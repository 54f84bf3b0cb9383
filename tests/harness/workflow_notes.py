"""The "Read me" note of each shipped workflow (Markdown: what it does, which files go where, what to change),
by workflow name. :func:`harness.workflow.write_builders` adds these unless a builder passes its own."""
CK = "**Checkpoint**: pick your SD1.5 model in *Load Checkpoint* (the demo ships a tiny random one, so images are noise).\n"
NOTES = {
 "wplus_basic": "# W+ Adapter\nA face's StyleGAN **W+ code** steers every cross-attention layer (residual cross-attention).\n\n" + CK +
   "**Face**: *Load W+ Code* reads `models/wplus/codes/`; to start from a photo use Face Detect → Face Align (FFHQ) → W+ Encode.\n**Adapter**: `wplus_adapter.bin` in `models/wplus/`.\nRaise *strength* for a stronger likeness.",
 "pidiff_basic": "# PIDiff\nStyle cross-attention behind each text cross-attention, fed by a W+ code.\n\n" + CK +
   "**Weights**: a PIDiff `.safetensors` in `models/pidiff/`. Strength 0.4 is the paper's inference value.",
 "wplus_controlnet": "# W+ Adapter + ControlNet (Canny edges)\nThe identity comes from the W+ code (residual cross-attention); "
   "the ControlNet takes its pose and outline from the edge map that core's *Canny* node makes from the photo in "
   "*Load Image* (the preview shows it).\n\n" + CK +
   "**Files**: an SD1.5 **Canny** ControlNet (e.g. `control_v11p_sd15_canny.pth`) in `models/controlnet/`; "
   "`wplus_adapter.bin` in `models/wplus/`; the face's W+ code in `models/wplus/codes/` (or from a photo as in *wplus_from_photo*).\n"
   "Put the photo whose pose you want in *Load Image*; raise the Canny thresholds for fewer edges. "
   "For a pose ControlNet use a pose preprocessor instead of Canny.",
 "personamagic_basic": "# PersonaMagic\nStage-regulated textual inversion: the trigger word `<persona>` becomes 4 tokens that follow the timestep.\n\n" + CK +
   "Connect **both** outputs of Stage-Regulated TI (MODEL and CONDITIONING) to the sampler.\n**Mapper**: `mapper-steps-N.pt` in `models/personamagic/`; **reference photo** in *Load Image*; CLIP ViT-B/32 in `models/clip_vision/`.",
 "crossinit_basic": "# Cross Initialization\nThe trigger word is initialised from 691 celebrity-name embeddings (no face input: training it on your photos is *Train Cross Initialization*).\n\n" + CK +
   "Type the trigger word (default `<face>`) in the prompt.",
 "adaface_basic": "# AdaFace\nAn ArcFace face embedding becomes 16 prompt tokens under the trigger word; the UNet is untouched.\n\n" + CK +
   "**Face**: *Load Face Embeds* from `models/face_embeds/` (or use *adaface_from_photo*). **AdaFace** checkpoint + Arc2Face encoder in `models/adaface/`.",
 "adaface_from_photo": "# AdaFace from a photo\nPhoto → face detection (antelopev2) → ArcFace embedding → AdaFace tokens → image → ID score.\n\n" + CK +
   "Put your photo in *Load Image*; the antelopev2 pack in `models/insightface/models/antelopev2/`. The Face Similarity node shows the ID score (higher = closer likeness).",
 "adaface_controlnet": "# AdaFace + ControlNet\nText-space identity plus a ControlNet.\n\n" + CK +
   "Give the ControlNet a hint of its kind (edges/pose/depth from a preprocessor), not a raw photo.",
 "adaface_animatediff": "# AdaFace on a batch of frames\nThe identity is in the prompt, so every frame gets the same tokens. For real video insert AnimateDiff-Evolved's loader on the MODEL (not installed here: this example runs the frames as a batch).\n\n" + CK,
 "mix_identities": "# Two identities in one image\nCross Initialization and AdaFace identities, each bound to a region mask (left / right).\n\n" + CK +
   "Change the masks to place the people.",
}
