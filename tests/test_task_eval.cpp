// Task evaluation (trainer/task_eval.h): the scoring loop on a fake stepper with known answers
// (exact match and per-token accuracy by hand, forced vs free-running inputs, batches of one
// prompt length); the real ModelStepper equals a naive replay that re-runs the full forward on
// prompt + fed tokens (Mamba-1, Mamba-2 hybrid with attention; batch 1 and 3); what a length
// means per task and the validation stream the examples come from; bad lengths and options; the
// report (trainer/task_eval_report.h): the JSON text, and a trained model's evaluation in its run
// folder (eval.lengths).
#include <doctest/doctest.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "autograd/grad_mode.h"
#include "data/copying.h"
#include "data/induction_heads.h"
#include "data/phonebook.h"
#include "data/selective_copying.h"
#include "models/generation.h"
#include "ops/ops.h"
#include "tests/support/temp_dir.h"
#include "tests/support/tiny_language_model.h"
#include "trainer/batch_sources.h"
#include "trainer/model_factory.h"
#include "trainer/task_eval.h"
#include "trainer/task_eval_report.h"

using namespace scanline;

namespace {

// Answers example k (its id is prompt[0]) right, except answer token 1 of odd ids (answer + 1).
// Checks what it is fed: forced inputs, or its own previous output.
class FakeStepper : public GreedyStepper {
 public:
  explicit FakeStepper(const std::vector<TaskExample>& examples) : examples_(examples) {}

  std::vector<int64_t> prefill(const std::vector<std::vector<int64_t>>& prompts, int64_t max_new_tokens) override {
    ids_.clear();
    for (const auto& p : prompts) {
      CHECK(p.size() == prompts[0].size());  // one prompt length a batch
      ids_.push_back(p[0]);
    }
    batch_sizes.push_back(int64_t(prompts.size()));
    max_new.push_back(max_new_tokens);
    j_ = 0;
    return outputs();
  }

  std::vector<int64_t> step(const std::vector<int64_t>& tokens) override {
    REQUIRE(tokens.size() == ids_.size());
    for (size_t b = 0; b < ids_.size(); ++b) {
      const TaskExample& e = examples_[size_t(ids_[b])];
      if (j_ + 1 >= e.answer.size()) continue;  // done: fed anything
      const int64_t expected = e.forced_inputs.empty() ? last_[b] : e.forced_inputs[j_];
      CHECK(tokens[b] == expected);
    }
    ++j_;
    return outputs();
  }

  std::vector<int64_t> batch_sizes, max_new;

 private:
  std::vector<int64_t> outputs() {
    last_.clear();
    for (int64_t id : ids_) {
      const TaskExample& e = examples_[size_t(id)];
      const int64_t right = j_ < e.answer.size() ? e.answer[j_] : 0;
      last_.push_back(id % 2 == 1 && j_ == 1 ? right + 1 : right);
    }
    return last_;
  }

  const std::vector<TaskExample>& examples_;
  std::vector<int64_t> ids_, last_;
  size_t j_ = 0;
};

LanguageModelConfig tiny(const std::string& pattern, const std::string& ssm) {
  return testing::tiny_untied_config(pattern, ssm, /*rope=*/false);
}

// task_example.h's replay, one example at a time, re-running the whole forward for every token.
std::vector<int64_t> naive_replay(const LanguageModel& lm, const TaskExample& e) {
  NoGradGuard no_grad;
  std::vector<int64_t> seq = e.prompt, out;
  for (size_t j = 0; j < e.answer.size(); ++j) {
    const Tensor logits = lm.forward(from_vector(seq, {1, int64_t(seq.size())}));
    const Tensor last = narrow(select(select(logits, 0, 0), 0, int64_t(seq.size()) - 1), 0, 0, lm.config().vocab_size);
    out.push_back(greedy_token(to_dtype(last, DType::f64).to_vector<double>()));
    if (j + 1 < e.answer.size()) seq.push_back(e.forced_inputs.empty() ? out.back() : e.forced_inputs[j]);
  }
  return out;
}

RunConfig task_run(const std::string& task) {
  RunConfig c;
  c.data.task = task;
  c.model.vocab_size = 256;
  c.train.seed = 5;
  return c;
}

}  // namespace

TEST_CASE("score_examples: exact match and token accuracy of a stepper wrong at answer 1 of odd examples") {
  // Ids 0..5: prompts of lengths 2, 3, 2, 3, 2, 2; answers of 3 tokens except id 5 (1 token, so
  // never wrong); ids 2 and 3 forced, the rest free-running.
  std::vector<TaskExample> examples;
  for (int64_t id = 0; id < 6; ++id) {
    TaskExample e;
    e.prompt = id == 1 || id == 3 ? std::vector<int64_t>{id, 9, 9} : std::vector<int64_t>{id, 9};
    e.answer = id == 5 ? std::vector<int64_t>{4} : std::vector<int64_t>{id + 1, id + 2, id + 3};
    if (id == 2 || id == 3) e.forced_inputs = {20 + id, 30 + id};
    examples.push_back(e);
  }
  FakeStepper stepper(examples);
  const TaskScore score = score_examples(examples, stepper, 3);
  // Prompt length 2: ids 0, 2, 4 then 5; length 3: ids 1, 3.
  CHECK(stepper.batch_sizes == std::vector<int64_t>{3, 1, 2});
  CHECK(stepper.max_new == std::vector<int64_t>{2, 0, 2});
  CHECK(score.examples == 6);
  CHECK(score.exact == 4);  // 0, 2, 4, 5
  CHECK(score.tokens == 5 * 3 + 1);
  CHECK(score.correct_tokens == 16 - 2);  // ids 1 and 3 miss one token each
  CHECK(score.exact_match() == doctest::Approx(4.0 / 6).epsilon(1e-15));
  CHECK(score.token_accuracy() == doctest::Approx(14.0 / 16).epsilon(1e-15));
  CHECK(score.predictions[1] == std::vector<int64_t>{2, 4, 4});  // answer 2, 3, 4 with 3 -> 4
  CHECK(score.predictions[2] == std::vector<int64_t>{3, 4, 5});
  CHECK(score.predictions[5] == std::vector<int64_t>{4});

  FakeStepper one(examples);  // batch 1: the same score, one example a prefill
  const TaskScore single = score_examples(examples, one, 1);
  CHECK(one.batch_sizes == std::vector<int64_t>(6, 1));
  CHECK(single.predictions == score.predictions);
  CHECK_THROWS_WITH_AS(score_examples(examples, one, 0), doctest::Contains("batch must be at least 1"), Error);
  examples[0].forced_inputs = {1};
  CHECK_THROWS_WITH_AS(score_examples(examples, one, 2), doctest::Contains("example 0 has 1 forced inputs for 3"),
                       Error);
}

TEST_CASE("ModelStepper replays examples as a naive full forward does (forced and free-running, batched)") {
  SelectiveCopyingOptions sc;
  sc.seq_len = 20;
  sc.n_memorize = 4;
  sc.n_colors = 8;
  sc.seed = 3;
  CopyingOptions cp;  // lengths 2..5: prompts of 3..6 tokens, several batches
  cp.n_tokens = 10;
  cp.min_len = 2;
  cp.max_len = 5;
  cp.seed = 4;
  std::vector<TaskExample> forced, free;
  for (int64_t i = 0; i < 7; ++i) forced.push_back(SelectiveCopying(sc).example(i));
  for (int64_t i = 0; i < 9; ++i) free.push_back(Copying(cp).example(i));
  for (auto [pattern, ssm] : {std::pair{"MM", "mamba1"}, std::pair{"M-M*", "mamba2"}}) {
    INFO(ssm, " \"", pattern, "\"");
    Generator gen(11);
    LanguageModel lm(tiny(pattern, ssm), gen);
    ModelStepper stepper(lm, DType::f32);
    for (const auto* examples : {&forced, &free}) {
      const TaskScore batched = score_examples(*examples, stepper, 3);
      const TaskScore single = score_examples(*examples, stepper, 1);
      CHECK(single.predictions == batched.predictions);
      int64_t exact = 0, correct = 0, tokens = 0;
      std::map<int64_t, int64_t> seen;
      for (size_t i = 0; i < examples->size(); ++i) {
        CAPTURE(i);
        const TaskExample& e = (*examples)[i];
        const std::vector<int64_t> naive = naive_replay(lm, e);
        CHECK(batched.predictions[i] == naive);
        int64_t right = 0;
        for (size_t j = 0; j < e.answer.size(); ++j) right += naive[j] == e.answer[j];
        exact += right == int64_t(e.answer.size());
        correct += right;
        tokens += int64_t(e.answer.size());
        for (int64_t t : naive) ++seen[t];
      }
      CHECK(batched.exact == exact);
      CHECK(batched.correct_tokens == correct);
      CHECK(batched.tokens == tokens);
      CHECK(seen.size() >= 3);  // the model does not answer one token for everything
    }
  }
}

TEST_CASE("task_config_at_length: a length per task and examples from the validation stream") {
  TaskOptions none;
  RunConfig sc = task_config_at_length(task_run("selective_copying"), "selective_copying", none, 64);
  CHECK(sc.data.seq_len == 64);
  RunConfig ih = task_config_at_length(task_run("copying"), "induction_heads", none, 40);
  CHECK(ih.data.task == "induction_heads");
  CHECK(ih.data.seq_len == 40);
  TaskOptions copy_options;
  copy_options.set("n_tokens", "10");
  copy_options.set("min_len", "1");
  RunConfig cp = task_config_at_length(task_run("copying"), "copying", copy_options, 7);
  CHECK(cp.data.seq_len == 14);
  CHECK(cp.data.task_options.values() ==
        std::map<std::string, std::string>{{"max_len", "7"}, {"min_len", "7"}, {"n_tokens", "10"}});
  TaskOptions book_options;
  book_options.set("digits", "3");
  book_options.set("shots", "1");
  RunConfig pb = task_config_at_length(task_run("phonebook"), "phonebook", book_options, 5);
  CHECK(pb.data.seq_len == (5 + 1 + 1) * (3 + 9));
  CHECK(pb.data.task_options.values().at("entries") == "5");

  const std::vector<TaskExample> copies = task_examples(cp, 3);
  REQUIRE(copies.size() == 3);
  CopyingOptions o;
  o.n_tokens = 10;
  o.min_len = o.max_len = 7;
  o.seq_len = 14;
  o.seed = validation_seed(5);
  for (int64_t i = 0; i < 3; ++i) {
    CHECK(copies[i].prompt == Copying(o).example(i).prompt);
    CHECK(copies[i].answer.size() == 7);
    CHECK(copies[i].prompt.size() == 8);
  }
  const std::vector<TaskExample> books = task_examples(pb, 2);
  CHECK(books[1].answer.size() == 4);  // 3 digits and '\n'
  CHECK(books[1].prompt == Phonebook({.seq_len = pb.data.seq_len, .entries = 5, .digits = 3, .shots = 1,
                                      .seed = validation_seed(5)}).example(1).prompt);
  const std::vector<TaskExample> heads = task_examples(ih, 1);
  CHECK(heads[0].prompt.size() == 40);
  CHECK(heads[0].answer.size() == 1);
  const std::vector<TaskExample> colours = task_examples(sc, 1);
  CHECK(colours[0].prompt.size() == 64 - 16 + 1);  // region (64 - 1 - 16), separator, first marker
  CHECK(colours[0].forced_inputs.size() == 15);

  CHECK(training_length(task_run("selective_copying")) == 256);
  CHECK(training_length(task_run("copying")) == 64);
  CHECK(training_length(cp) == 7);
  CHECK(training_length(pb) == 5);
}

TEST_CASE("task lengths and options a task cannot use are ConfigErrors") {
  CHECK_THROWS_AS(task_config_at_length(task_run("copying"), "copying", {}, 0), ConfigError);
  // Too short for 16 colours to recall.
  CHECK_THROWS_AS(task_examples(task_config_at_length(task_run("copying"), "selective_copying", {}, 20), 1),
                  ConfigError);
  TaskOptions shots;
  shots.set("shots", "3");
  CHECK_THROWS_AS(task_examples(task_config_at_length(task_run("phonebook"), "phonebook", shots, 3), 1), ConfigError);
  TaskOptions unknown;
  unknown.set("n_colours", "3");
  CHECK_THROWS_AS(task_examples(task_config_at_length(task_run("x"), "selective_copying", unknown, 64), 1),
                  ConfigError);
  RunConfig small = task_run("phonebook");
  small.model.vocab_size = 32;  // bytes do not fit
  CHECK_THROWS_WITH_AS(task_examples(task_config_at_length(small, "phonebook", {}, 4), 1),
                       doctest::Contains("model.vocab_size"), ConfigError);
}

TEST_CASE("the JSON report is scanline eval's format") {
  TaskEvalInfo info;
  info.name = "a \"run\"";
  info.task = "copying";
  info.options.set("n_tokens", "8");
  info.checkpoint = "runs/a/ckpt-00000003.h5";
  info.step = 3;
  info.compute = DType::bf16;
  LengthScore row;
  row.length = 3;
  row.score.examples = 4;
  row.score.exact = 1;
  row.score.tokens = 12;
  row.score.correct_tokens = 6;
  row.seconds = 0.25;
  std::ostringstream out;
  write_task_eval_json(out, info, {row, row});
  CHECK(out.str() ==
        "{\"name\": \"a \\\"run\\\"\", \"task\": \"copying\", \"checkpoint\": \"runs/a/ckpt-00000003.h5\", "
        "\"step\": 3, \"dtype\": \"bf16\", \"task_options\": {\"n_tokens\": \"8\"},\n \"lengths\": [\n"
        "  {\"length\": 3, \"examples\": 4, \"exact_match\": 0.25, \"token_accuracy\": 0.5, \"seconds\": 0.250},\n"
        "  {\"length\": 3, \"examples\": 4, \"exact_match\": 0.25, \"token_accuracy\": 0.5, \"seconds\": 0.250}]}\n");
}

TEST_CASE("evaluate_trained_model writes <run_dir>/eval.json with one entry a length") {
  testing::TempDir dir("task_eval");
  testing::QuietLog quiet;
  RunConfig c = task_run("induction_heads");
  c.model.d_model = 8;
  c.model.n_layers = 1;
  c.model.d_state = 4;
  c.eval.lengths = {6, 10};
  c.eval.examples = 3;
  c.eval.batch = 2;
  c.train.run_dir = dir.file("tiny-run") + "/";  // a trailing slash still names the run
  std::filesystem::create_directories(c.train.run_dir);
  Generator gen(1);
  const LanguageModel lm(language_model_config(c), gen);
  evaluate_trained_model(lm, Device::cpu(), c, "ckpt.h5", 7);

  // The scores are score_examples' on the same examples.
  std::ostringstream expected;
  ModelStepper stepper(lm, DType::f32);
  std::vector<LengthScore> scores;
  for (int64_t length : c.eval.lengths) {
    const auto examples = task_examples(task_config_at_length(c, "induction_heads", {}, length), 3);
    scores.push_back({length, score_examples(examples, stepper, 2), 0});
  }
  write_task_eval_json(expected, {"tiny-run", "induction_heads", {}, "ckpt.h5", 7, DType::f32}, scores);
  std::ifstream in(dir.file("tiny-run/eval.json"));
  const std::string text{std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
  // Equal but for the seconds.
  auto without_seconds = [](std::string s) {
    for (size_t at = s.find("\"seconds\": "); at != std::string::npos; at = s.find("\"seconds\": ", at + 1))
      s.erase(at + 11, s.find('}', at) - at - 11);
    return s;
  };
  CHECK(without_seconds(text) == without_seconds(expected.str()));
  CHECK(text.find("{\"length\": 10, \"examples\": 3, ") != std::string::npos);
  CHECK_FALSE(std::filesystem::exists(dir.file("tiny-run/eval.json.tmp")));
}
