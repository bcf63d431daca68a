"""Default fine-tuning configuration; every recipe starts from it.

Override any field on the command line, e.g.
  python scripts/train.py --config configs/default.py --workdir runs/x \
      --config.freeze.frozen_depth=4 --config.optim.learning_rate=0.01
The config is locked: a misspelt field fails with a "did you mean" hint.
"""
import ml_collections


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()

    # Pretrained weights: a directory written by scripts/convert_weights.py (or the quickstart's
    # pretraining). Empty: random initialisation of model.arch (training from scratch).
    c.weights = ""
    c.model = ml_collections.ConfigDict()
    c.model.arch = "resnet50"          # used only when weights == ""
    c.model.source = "torchvision"     # torchvision | keras; used only when weights == ""
    c.model.dtype = "bfloat16"         # compute dtype; params, BatchNorm statistics and loss stay float32
    # The new head: "lecun" (Flax's Dense init, what load_pretrained gives for a new class count) or
    # "zeros" (every class starts equally likely whatever the scale of the pretrained features).
    c.model.head_init = "lecun"
    # Where BatchNorm runs on running averages (frozen stages; evaluation), compute conv + BatchNorm as
    # one convolution with a folded kernel and bias (the stored variables never change). False: unfolded.
    c.model.fold_frozen_bn = True

    c.data = ml_collections.ConfigDict()
    # "tfds:<name>", "folder:<path>" (one subfolder per class), "synthetic" or "digits".
    c.data.source = "tfds:tf_flowers"
    c.data.train_split = "train[:90%]"
    c.data.eval_split = "train[90%:]"
    c.data.data_dir = ""               # TFDS data_dir; empty: the TFDS default
    c.data.image_size = 0              # 0: the weights' input size (224, Inception 299)
    c.data.resize_size = 0             # eval: shorter side before the center crop; 0: the weights' ratio (256/224)
    c.data.num_classes = 0             # 0: read from the dataset
    c.data.min_crop_area = 0.08        # random-resized-crop scale lower bound (1: no random crop)
    c.data.random_flip = True          # random horizontal flips in training (the digits and glyphs never flip)
    c.data.skip_corrupt = False        # skip unreadable images with a warning instead of failing
    c.data.classes = ()                # digits, glyphs: the classes to keep, relabelled 0..k-1 in this order (empty: all)
    c.data.labels_per_class = 0        # digits, glyphs: keep this many labelled examples per class (0: all)
    c.data.label_seed = -1             # ... drawn with this seed (-1: data.seed, so seeds vary the labels)
    c.data.seed = -1                   # order and augmentation of the training data (-1: the run's seed). A sweep
                                       # over seed fixes it, so its members differ only in head init and dropout
    c.data.num_examples = 0            # synthetic: examples per split (0: 256); its classes: num_classes or 10.
                                       # glyphs: examples rendered (0: the source's default)
    c.data.glyph_grid = 8              # glyphs: rendered on an 8, 16 or 32 grid (then resized to image_size)
    c.data.shift = ""                  # digits, glyphs: a fixed shift (tl_jax/data/shifts.py): invert, noise, blur,
                                       # permute_labels

    c.freeze = ml_collections.ConfigDict()
    # Which stages train; frozen stages run BatchNorm on running averages (statistics bit-identical),
    # hold no optimizer state and apply no dropout. The stages: ResNet stem, layer1..layer4, head;
    # VGG block1..block5, classifier, head; Inception-V3 stem, mixed5b..mixed7c, head. Give one of:
    # frozen_depth: freeze the first k stages. 0: full fine-tune; -1: every backbone stage, only the head
    #   trains (5 for ResNet, 6 VGG, 12 Inception).
    c.freeze.frozen_depth = 0
    # trainable_stages: these stages train, every other one is frozen (surgical fine-tuning, Lee et al.
    #   ICLR 2023), e.g. ("layer1",) or ("layer1", "head").
    c.freeze.trainable_stages = ()
    # schedule: phases ((start_step, trainable), ...) from step 0, trainable a frozen depth or a tuple of
    #   stage names, e.g. LP-FT (Kumar et al. ICLR 2022) ((0, -1), (500, 0)): the head first, then everything.
    c.freeze.schedule = ()
    c.freeze.schedule_learning_rates = ()  # one peak per phase: the learning-rate schedule restarts each phase
    c.freeze.lp_ft_steps = 0           # > 0: shorthand for schedule ((0, -1), (lp_ft_steps, 0))
    c.freeze.unfreeze_every_steps = 0  # gradual unfreezing (a schedule): one more stage from the top every N steps
    c.freeze.unfreeze_until = 0        # ... until this many stages stay frozen
    # reinit_from: a stage name or index. That stage and every later one (head included) are freshly
    # initialised from `seed` with the source framework's own initialisers (Yosinski et al. NIPS 2014:
    # copy layers 1..n, re-initialise the rest). Combinable with any freezing. "": keep every loaded weight.
    c.freeze.reinit_from = ""
    c.freeze.patterns = ()             # also: regexes over '/'-joined parameter paths, frozen optimizer-side only
    c.freeze.lr_mults = ()             # (regex, multiplier) pairs: discriminative learning rates

    c.optim = ml_collections.ConfigDict()
    c.optim.name = "sgd"               # sgd (momentum, nesterov) | adamw
    c.optim.learning_rate = 0.01       # peak, for the global batch
    c.optim.head_only_learning_rate = 0.0  # > 0: the peak when only the head trains (every backbone stage frozen)
    c.optim.momentum = 0.9
    c.optim.weight_decay = 1e-4        # applied to trainable leaves only
    c.optim.schedule = "cosine"        # cosine | constant
    c.optim.warmup_epochs = 0.0
    c.optim.grad_clip_norm = 0.0       # 0: off; clips the trainable gradients only

    c.batch_size = 64                  # global batch, split over all devices and hosts
    c.eval_batch_size = 0              # 0: batch_size (evaluation holds no gradients: larger is cheaper per image)
    c.num_epochs = 10
    c.num_steps = 0                    # > 0: this many optimizer steps instead of num_epochs
    c.label_smoothing = 0.0
    c.parallel = "shard_map"           # shard_map | pmap | none (plain jit, one device)
    c.sync_bn = True                   # trainable BatchNorm averages batch statistics across devices
    c.seed = 0
    # Activation cache: the frozen prefix (the stages below the lowest trainable one) runs once over the
    # data, its output is kept in memory-mapped files under the workdir, and the rest trains from it.
    # Used where that replays training exactly (no random augmentation; otherwise it says why and trains
    # the usual way).
    c.activation_cache = False
    c.activation_cache_views = 1       # 1: each training image once; V > 1: V augmented epochs of the pipeline
    c.activation_cache_max_gb = 16.0   # refuse a larger cache (its size is printed before anything runs)

    c.log_every_steps = 20
    c.eval_every_epochs = 1
    c.checkpoint_every_steps = 200     # and at the end; 0: no checkpoints (no resume, no evaluate.py)
    c.keep_checkpoints = 2             # plus the best by eval top-1
    c.tensorboard = True               # also write the logged scalars to workdir/tensorboard
    return c
