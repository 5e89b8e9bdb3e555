// `scanline generate --checkpoint PATH --prompt TEXT ... [options]`: continues prompts with a
// trained model (models/generation.h). The model is rebuilt as `train --resume` rebuilds it
// (trainer/load_model.h). Text prompts are byte-tokenized when the vocabulary covers the bytes (256 or
// more tokens); otherwise prompts are token ids. Every command-line problem (missing checkpoint,
// empty prompt, token id outside the vocabulary, a value out of range) is exit code 2 naming the
// flag; a corrupt checkpoint or a bad saved config is reported by main (exit 1 or 2).
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "core/error.h"
#include "data/byte_tokenizer.h"
#include "models/generation.h"
#include "trainer/cli/usage.h"
#include "trainer/device_select.h"
#include "trainer/load_model.h"

namespace scanline::cli {

namespace {

namespace fs = std::filesystem;

constexpr const char* kUsage =
    "usage: scanline generate --checkpoint PATH [--config CONFIG.yaml]\n"
    "                         (--prompt TEXT | --prompt-tokens \"ID ID ...\" | --prompts-file FILE)...\n"
    "                         [--max-new-tokens N] [--temperature T] [--top-k K] [--top-p P]\n"
    "                         [--stop TOKEN ...] [--seed S] [--device auto|cpu|cuda] [--dtype f32|bf16]\n"
    "\n"
    "  --checkpoint PATH    a checkpoint file, or a run folder (its newest valid checkpoint)\n"
    "  --config FILE        build the model from this config instead of the one saved in the checkpoint\n"
    "  --prompt TEXT        a text prompt, byte-tokenized (models with a vocabulary of 256 or more)\n"
    "  --prompt-tokens IDS  a prompt as token ids separated by spaces\n"
    "  --prompts-file FILE  one text prompt a line\n"
    "                       (each flag may repeat; the prompts run as one batch, in the order given)\n"
    "  --max-new-tokens N   tokens to generate a prompt, at most (default 64)\n"
    "  --temperature T      logits / T before sampling; 0 = greedy (default 1)\n"
    "  --top-k K            sample among the K most likely tokens; 0 = off (default)\n"
    "  --top-p P            sample in the smallest set of probability >= P, in (0, 1]; 1 = off (default)\n"
    "  --stop TOKEN ...     tokens that end a sequence (kept in its output): a number is a token id,\n"
    "                       anything else one character (\\n and \\t understood) of a byte vocabulary\n"
    "  --seed S             sampling seed (default 0); the same seed gives the same tokens\n"
    "  --device D           auto (default: a GPU when present), cpu or cuda\n"
    "  --dtype D            f32 or bf16 activations (default: the run's train.precision)\n"
    "\n"
    "Prints each prompt's continuation (text for byte vocabularies, token ids otherwise) and a timing\n"
    "line. Exit codes: 0 done, 1 error (e.g. a corrupt checkpoint), 2 invalid command line.\n";

struct Prompt {
  std::string flag;  // where it came from, for messages: "--prompt 2", "--prompts-file F:3"
  std::string text;
  std::vector<int64_t> ids;  // set for --prompt-tokens
  bool is_text = true;
};

struct Args {
  std::string checkpoint, config;
  std::vector<Prompt> prompts;
  std::vector<std::string> stops;
  GenerationOptions options;
  std::string device = "auto", dtype;
};

double parse_double(const std::string& flag, const std::string& text) {
  char* end = nullptr;
  const double v = std::strtod(text.c_str(), &end);
  if (text.empty() || *end != '\0' || !std::isfinite(v)) usage_problem(flag + " expects a number, found '" + text + "'");
  return v;
}

std::vector<int64_t> parse_ids(const std::string& flag, const std::string& text) {
  std::istringstream in(text);
  std::vector<int64_t> ids;
  for (std::string word; in >> word;) ids.push_back(parse_int(flag, word));
  if (ids.empty()) usage_problem(flag + " is empty (a prompt needs at least one token)");
  return ids;
}

std::vector<Prompt> read_prompts_file(const std::string& path) {
  std::ifstream in(path);
  if (!in) usage_problem("--prompts-file '" + path + "' cannot be read");
  std::vector<Prompt> prompts;
  int line_no = 0;
  for (std::string line; std::getline(in, line);) {
    ++line_no;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    const std::string where = "--prompts-file " + path + ":" + std::to_string(line_no);
    if (line.empty()) usage_problem(where + ": empty prompt");
    prompts.push_back({where, line, {}, true});
  }
  if (prompts.empty()) usage_problem("--prompts-file '" + path + "' holds no prompt");
  return prompts;
}

Args parse_args(int argc, char** argv) {
  Args a;
  a.options.sampling.temperature = 1.0;
  auto value = [&](int& i, const std::string& flag) -> std::string {
    if (i + 1 >= argc) usage_problem(flag + " expects a value");
    return argv[++i];
  };
  for (int i = 1; i < argc; ++i) {
    const std::string flag = argv[i];
    if (flag == "--checkpoint") a.checkpoint = value(i, flag);
    else if (flag == "--config") a.config = value(i, flag);
    else if (flag == "--prompt") {
      const std::string text = value(i, flag);
      if (text.empty()) usage_problem("--prompt is empty (a prompt needs at least one character)");
      a.prompts.push_back({flag, text, {}, true});
    } else if (flag == "--prompt-tokens") {
      a.prompts.push_back({flag, "", parse_ids(flag, value(i, flag)), false});
    } else if (flag == "--prompts-file") {
      for (Prompt& p : read_prompts_file(value(i, flag))) a.prompts.push_back(std::move(p));
    } else if (flag == "--max-new-tokens") {
      a.options.max_new_tokens = parse_int(flag, value(i, flag));
      if (a.options.max_new_tokens < 1) usage_problem("--max-new-tokens must be at least 1");
    } else if (flag == "--temperature") {
      a.options.sampling.temperature = parse_double(flag, value(i, flag));
      if (a.options.sampling.temperature < 0) usage_problem("--temperature must be >= 0 (0 = greedy)");
    } else if (flag == "--top-k") {
      a.options.sampling.top_k = parse_int(flag, value(i, flag));
      if (a.options.sampling.top_k < 0) usage_problem("--top-k must be >= 0 (0 = off)");
    } else if (flag == "--top-p") {
      a.options.sampling.top_p = parse_double(flag, value(i, flag));
      const double p = a.options.sampling.top_p;
      if (!(p > 0 && p <= 1)) usage_problem(std::string("--top-p must be in (0, 1] (1 = off), found ") + argv[i]);
    } else if (flag == "--stop") {
      // Every following argument up to the next option is a stop token.
      const int first = i + 1;
      while (i + 1 < argc && std::string(argv[i + 1]).rfind("--", 0) != 0) a.stops.emplace_back(argv[++i]);
      if (i + 1 == first) usage_problem("--stop expects one or more tokens");
    } else if (flag == "--seed") {
      const int64_t seed = parse_int(flag, value(i, flag));
      if (seed < 0) usage_problem("--seed must be >= 0");
      a.options.seed = uint64_t(seed);
    } else if (flag == "--device") {
      a.device = value(i, flag);
      if (a.device != "auto" && a.device != "cpu" && a.device != "cuda")
        usage_problem("--device must be auto, cpu or cuda, found '" + a.device + "'");
    } else if (flag == "--dtype") {
      a.dtype = value(i, flag);
      if (a.dtype != "f32" && a.dtype != "bf16") usage_problem("--dtype must be f32 or bf16, found '" + a.dtype + "'");
    } else {
      usage_problem("unknown option '" + flag + "'");
    }
  }
  if (a.checkpoint.empty()) usage_problem("no checkpoint (--checkpoint PATH)");
  if (a.prompts.empty()) usage_problem("no prompt (--prompt TEXT, --prompt-tokens IDS or --prompts-file FILE)");
  std::error_code ec;
  if (!fs::exists(a.checkpoint, ec)) usage_problem("--checkpoint '" + a.checkpoint + "' does not exist");
  if (!a.config.empty() && !fs::is_regular_file(a.config, ec))
    usage_problem("--config '" + a.config + "' does not exist");
  return a;
}

// One stop value as a token id: digits are an id, else one character of a byte vocabulary.
int64_t stop_token(const std::string& text, int64_t vocab, bool bytes) {
  if (text.find_first_not_of("0123456789") == std::string::npos) {
    const int64_t id = parse_int("--stop", text);
    if (id >= vocab)
      usage_problem("--stop " + text + " is outside the model's vocabulary [0, " + std::to_string(vocab) + ")");
    return id;
  }
  const std::string c = text == "\\n" ? "\n" : text == "\\t" ? "\t" : text;
  if (!bytes) usage_problem("--stop '" + text + "': the model's vocabulary is not bytes; give a token id");
  if (c.size() != 1)
    usage_problem("--stop '" + text + "' is " + std::to_string(c.size()) +
                  " bytes; a stop is one token (a token id or one character)");
  return static_cast<unsigned char>(c[0]);
}

// Token ids as text: bytes as they are, ids past the bytes as <id>.
std::string decode(const std::vector<int64_t>& ids) {
  std::string out;
  for (int64_t id : ids) {
    if (id < ByteTokenizer::kVocabSize) {
      out += char(static_cast<unsigned char>(id));
    } else {
      out += '<';
      out += std::to_string(id);
      out += '>';
    }
  }
  return out;
}

// A prompt for a header line: quoted, control bytes escaped.
std::string quoted(const std::string& text) {
  std::string out = "\"";
  for (unsigned char c : text) {
    if (c == '\n') out += "\\n";
    else if (c == '\t') out += "\\t";
    else if (c == '"' || c == '\\') out += std::string("\\") + char(c);
    else if (c < 0x20 || c == 0x7f) {
      char hex[8];
      std::snprintf(hex, sizeof hex, "\\x%02x", c);
      out += hex;
    } else out += char(c);
  }
  return out + "\"";
}

std::string join_ids(const std::vector<int64_t>& ids) {
  std::string out;
  for (int64_t id : ids) {
    if (!out.empty()) out += ' ';
    out += std::to_string(id);
  }
  return out;
}

int run(const Args& a) {
  LoadedModel loaded;
  try {
    loaded = load_model({a.checkpoint, a.config, a.device, a.dtype});
  } catch (const ModelRequestError& e) {
    usage_problem(e.what());
  }
  const LanguageModel& model = *loaded.model;
  const std::string& path = loaded.path;
  const Device device = loaded.device;
  const DType compute = loaded.compute;

  const int64_t vocab = model.config().vocab_size;
  const bool bytes = vocab >= ByteTokenizer::kVocabSize;
  std::vector<std::vector<int64_t>> prompts;
  for (const Prompt& p : a.prompts) {
    if (p.is_text && !bytes)
      usage_problem(p.flag + ": the model's vocabulary (" + std::to_string(vocab) +
                    " tokens) does not cover the 256 bytes; give token ids with --prompt-tokens");
    std::vector<int64_t> ids = p.ids;
    if (p.is_text)
      for (int32_t id : ByteTokenizer::encode(p.text)) ids.push_back(id);
    for (int64_t id : ids)
      if (id < 0 || id >= vocab)
        usage_problem(p.flag + ": token " + std::to_string(id) + " is outside the model's vocabulary [0, " +
                      std::to_string(vocab) + ")");
    prompts.push_back(std::move(ids));
  }
  GenerationOptions options = a.options;
  options.compute = compute;
  for (const std::string& s : a.stops) options.stop_tokens.push_back(stop_token(s, vocab, bytes));

  const std::string summary = model.summary();
  std::printf("%s (step %lld of %s) on %s, %s\n", summary.substr(0, summary.find('\n')).c_str(),
              (long long)loaded.step, path.c_str(), describe_device(device).c_str(), dtype_name(compute));
  std::fflush(stdout);
  const GenerationResult result = generate(model, prompts, options);
  for (size_t b = 0; b < prompts.size(); ++b) {
    const Prompt& p = a.prompts[b];
    const std::string ending = result.stopped[b] ? "stop token " + std::to_string(result.tokens[b].back())
                                                 : "max_new_tokens";
    std::printf("--- %zu: %s (%zu token%s) -> %zu new token%s, ended by %s\n", b,
                p.is_text ? quoted(p.text).c_str() : join_ids(p.ids).c_str(), prompts[b].size(),
                prompts[b].size() == 1 ? "" : "s", result.tokens[b].size(), result.tokens[b].size() == 1 ? "" : "s",
                ending.c_str());
    const std::string text = bytes ? decode(result.tokens[b]) : join_ids(result.tokens[b]);
    std::fwrite(text.data(), 1, text.size(), stdout);
    std::printf("\n");
  }
  const double prefill_ms = result.prefill_seconds * 1e3, decode_ms = result.decode_seconds * 1e3;
  std::printf("timing: prefill %lld tokens in %.2f ms; decode %lld steps in %.2f ms (%.3f ms/step); %lld new tokens "
              "in all, %.1f tokens/s\n",
              (long long)result.prefill_tokens, prefill_ms, (long long)result.steps, decode_ms,
              result.steps ? decode_ms / double(result.steps) : 0.0, (long long)result.new_tokens(),
              double(result.new_tokens()) / (result.prefill_seconds + result.decode_seconds));
  return 0;
}

}  // namespace

int generate(int argc, char** argv) {
  return run_command("generate", kUsage, argc, argv, [](int n, char** v) { return run(parse_args(n, v)); });
}

}  // namespace scanline::cli
