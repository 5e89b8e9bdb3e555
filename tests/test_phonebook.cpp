// The phonebook generator: the exact text and row of a hand-checked book, the format of every
// book (unique names of 2-3 syllables, unique D-digit numbers, a blank line, shots from the book,
// the query), the scored answer (digits and '\n'), the generation example, no leak (the answer
// number occurs once before the query, in its own entry), determinism, rank sharding, exact
// resume, the seq_len a book needs, and the config keys.
#include <doctest/doctest.h>

#include <regex>
#include <set>
#include <sstream>

#include "core/error.h"
#include "data/phonebook.h"
#include "trainer/batch_sources.h"
#include "trainer/config_loader.h"
#include "support/task_streams.h"

using namespace scanline;
using scanline::testing::row;
using scanline::testing::same;

namespace {

PhonebookOptions book_options(int64_t seq_len, int64_t batch, int64_t entries, int64_t digits, int64_t shots,
                              uint64_t seed, int64_t rank = 0, int64_t world = 1) {
  return {.seq_len = seq_len, .batch = batch, .entries = entries, .digits = digits, .shots = shots, .seed = seed,
          .rank = rank, .world = world};
}

std::vector<int64_t> bytes(const std::string& s) { return {s.begin(), s.end()}; }

std::vector<std::string> lines(const std::string& text) {
  std::vector<std::string> out;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) out.push_back(line);
  return out;
}

size_t count(const std::string& text, const std::string& part) {
  size_t n = 0;
  for (size_t at = text.find(part); at != std::string::npos; at = text.find(part, at + 1)) ++n;
  return n;
}

struct Parsed {
  std::vector<std::string> book, shots;
  std::string query;  // the last line, "Name: number"
};

// Checks a text's format; returns its parts.
Parsed check_text(const Phonebook& task, const std::string& text) {
  const auto& o = task.options();
  const std::regex entry("([A-Z][a-z]{3}|[A-Z][a-z]{5}): [0-9]{" + std::to_string(o.digits) + "}");
  const std::regex syllables("([bdfghjklmnprstvz][aeiou])+");
  std::vector<std::string> all = lines(text);
  REQUIRE(int64_t(all.size()) == o.entries + 1 + o.shots + 1);
  CHECK(text.back() == '\n');
  CHECK(int64_t(text.size()) - 1 <= task.required_seq_len());
  Parsed parsed{{all.begin(), all.begin() + o.entries}, {all.begin() + o.entries + 1, all.end() - 1}, all.back()};
  CHECK(all[size_t(o.entries)].empty());
  std::set<std::string> names, numbers;
  for (const std::string& line : parsed.book) {
    CHECK(std::regex_match(line, entry));
    const std::string name = line.substr(0, line.find(':'));
    std::string lower = name;
    lower[0] = char(lower[0] - 'A' + 'a');
    CHECK(std::regex_match(lower, syllables));
    names.insert(name);
    numbers.insert(line.substr(line.find(' ') + 1));
  }
  CHECK(int64_t(names.size()) == o.entries);
  CHECK(int64_t(numbers.size()) == o.entries);
  const auto in_book = [&](const std::string& line) {
    return std::find(parsed.book.begin(), parsed.book.end(), line) != parsed.book.end();
  };
  CHECK(in_book(parsed.query));
  std::set<std::string> shots(parsed.shots.begin(), parsed.shots.end());
  CHECK(shots.size() == parsed.shots.size());
  for (const std::string& shot : parsed.shots) {
    CHECK(in_book(shot));
    CHECK(shot != parsed.query);
  }
  return parsed;
}

}  // namespace

TEST_CASE("a hand-checked phonebook: entries, a blank line, a shot, the query; digits and newline scored") {
  Phonebook task(book_options(80, 1, 3, 4, 1, 5));
  CHECK(task.vocab_size() == 256);
  CHECK(task.required_seq_len() == 65);  // (3 + 1 + 1) * (4 + 9)
  const std::string text = "Karofu: 9406\nNohu: 1599\nFaje: 4093\n\nNohu: 1599\nFaje: 4093\n";
  CHECK(task.text(0) == text);
  std::vector<int64_t> in(80), tg(80);
  task.write_sequence(0, in.data(), tg.data());
  std::vector<int64_t> expected_in = bytes(text.substr(0, text.size() - 1));
  expected_in.resize(80, Phonebook::kPad);
  CHECK(in == expected_in);
  // The query's ' ' is at 52: positions 52..56 predict "4093\n".
  std::vector<int64_t> expected_tg(80, kIgnoreIndex);
  for (int64_t p = 52; p <= 56; ++p) expected_tg[size_t(p)] = int64_t(text[size_t(p + 1)]);
  CHECK(tg == expected_tg);

  TaskExample example = task.example(0);
  CHECK(example.prompt == bytes("Karofu: 9406\nNohu: 1599\nFaje: 4093\n\nNohu: 1599\nFaje: "));
  CHECK(example.answer == bytes("4093\n"));
  CHECK(example.forced_inputs.empty());
  CHECK(task.text(1) == "Hehi: 3770\nZugu: 7989\nTogidi: 3626\n\nHehi: 3770\nZugu: 7989\n");
}

TEST_CASE("every phonebook has the format; queries reach every entry; names have 2 and 3 syllables") {
  Phonebook task(book_options(200, 16, 8, 5, 2, 3));
  std::set<size_t> queried;
  std::set<size_t> name_lengths;
  for (int b = 0; b < 4; ++b) {
    Batch batch = task.next();
    CHECK(batch.inputs.shape() == Shape{16, 200});
    for (int64_t r = 0; r < 16; ++r) {
      const int64_t index = b * 16 + r;
      const std::string text = task.text(index);
      Parsed parsed = check_text(task, text);
      queried.insert(size_t(std::find(parsed.book.begin(), parsed.book.end(), parsed.query) - parsed.book.begin()));
      for (const std::string& line : parsed.book) name_lengths.insert(line.find(':'));
      // The row: text minus its last byte, pad; exactly digits + 1 scored targets, at the end.
      std::vector<int64_t> in = row(batch.inputs, r), tg = row(batch.targets, r);
      const int64_t n = int64_t(text.size());
      for (int64_t p = 0; p < 200; ++p) {
        CHECK(in[size_t(p)] == (p < n - 1 ? int64_t(text[size_t(p)]) : Phonebook::kPad));
        CHECK(tg[size_t(p)] == (p >= n - 7 && p < n - 1 ? int64_t(text[size_t(p + 1)]) : kIgnoreIndex));
      }
    }
  }
  CHECK(queried.size() == 8);
  CHECK(name_lengths == std::set<size_t>{4, 6});
}

TEST_CASE("a phonebook example is the training row, and the answer number occurs once before the query") {
  Phonebook task(book_options(400, 1, 20, 3, 3, 4));
  for (int64_t i = 0; i < 40; ++i) {
    const std::string text = task.text(i);
    Parsed parsed = check_text(task, text);
    TaskExample example = task.example(i);
    const std::string number = parsed.query.substr(parsed.query.find(' ') + 1);
    const std::string name = parsed.query.substr(0, parsed.query.find(':'));
    CHECK(example.answer == bytes(number + "\n"));
    const std::string prompt(example.prompt.begin(), example.prompt.end());
    CHECK(prompt + number + "\n" == text);
    // No leak: the number only in its entry (numbers are unique, shots skip the query).
    CHECK(count(prompt, number) == 1);
    CHECK(count(prompt, name + ": " + number + "\n") == 1);
    CHECK(prompt.ends_with("\n" + name + ": "));
  }
}

TEST_CASE("a thousand-entry book keeps names and numbers unique") {
  PhonebookOptions o = book_options(0, 1, 1000, 4, 0, 9);
  o.seq_len = Phonebook::required_seq_len(o);
  CHECK(o.seq_len == 1001 * 13);
  Phonebook task(o);
  check_text(task, task.text(0));
  // Half the 4-digit numbers is the most a book may hold: still drawn, all distinct.
  Phonebook full(book_options(Phonebook::required_seq_len(book_options(0, 1, 5000, 4, 0, 9)), 1, 5000, 4, 0, 9));
  check_text(full, full.text(0));
}

TEST_CASE("the phonebook stream depends only on the seed, and each sequence only on its index") {
  Phonebook a(book_options(150, 4, 6, 6, 1, 7)), b(book_options(150, 4, 6, 6, 1, 7)), c(book_options(150, 4, 6, 6, 1, 8));
  testing::check_stream_is_pure(a, b, c, 4, 150);
}

TEST_CASE("phonebook ranks take every world-th sequence: their union is the 1-rank stream") {
  testing::check_ranks_partition<Phonebook>(
      [](int64_t batch, int64_t rank, int64_t world) {
        return std::make_unique<Phonebook>(book_options(120, batch, 5, 4, 0, 11, rank, world));
      },
      2, 3);
}

TEST_CASE("a phonebook generator restored from position() continues exactly") {
  Phonebook task(book_options(120, 3, 5, 4, 1, 12)), restored(book_options(120, 3, 5, 4, 1, 12));
  const std::vector<int64_t> saved = testing::check_position_restores(task, restored, 4, 4);
  CHECK(saved == std::vector<int64_t>{Phonebook::kPositionTag, 1, 12, 12, 120, 5, 4, 1});

  Phonebook bigger(book_options(120, 3, 6, 4, 1, 12));
  CHECK_THROWS_WITH_AS(bigger.set_position(saved),
                       doctest::Contains("phonebook: the saved position is for entries = 5 but this one has "
                                         "entries = 6"),
                       Error);
}

TEST_CASE("impossible phonebook settings are rejected with the option named") {
  CHECK_THROWS_WITH_AS(Phonebook(book_options(64, 1, 3, 4, 1, 0)),
                       doctest::Contains("phonebook: seq_len 64 cannot hold a book of 3 entries with 4-digit numbers "
                                         "and 1 shots: the longest text needs seq_len >= 65"),
                       Error);
  CHECK_NOTHROW(Phonebook(book_options(65, 1, 3, 4, 1, 0)));
  CHECK_THROWS_WITH_AS(Phonebook(book_options(4096, 1, 6, 1, 0, 0)),
                       doctest::Contains("6 entries need unique 1-digit numbers; at most 5 are allowed"), Error);
  CHECK_THROWS_WITH_AS(Phonebook(book_options(4096, 1, 3, 4, 3, 0)),
                       doctest::Contains("shots must be in [0, entries = 3)"), Error);
  CHECK_THROWS_WITH_AS(Phonebook(book_options(4096, 1, 3, 19, 0, 0)), doctest::Contains("digits must be in [1, 18]"),
                       Error);
  CHECK_THROWS_WITH_AS(Phonebook(book_options(4096, 1, 0, 4, 0, 0)), doctest::Contains("entries must be at least 1"),
                       Error);
  CHECK_THROWS_WITH_AS(Phonebook(book_options(4096, 0, 3, 4, 0, 0)), doctest::Contains("batch must be at least 1"),
                       Error);
}

TEST_CASE("data.task: phonebook reads its options, and bad ones are ConfigErrors at their line") {
  const std::string yaml =
      "model:\n  vocab_size: 256\ndata:\n  task: phonebook\n  seq_len: 512\n  task_options:\n    entries: 20\n"
      "    digits: 6\n    shots: 2\n";
  BatchSources sources = make_batch_sources(parse_run_config(yaml, "pb.yaml"), 2, 4);
  CHECK(sources.vocab_size == 256);
  CHECK(sources.description.starts_with(
      "phonebook: seq_len 512 (the longest book needs 345), 20 entries, 6-digit numbers, 2 shots; byte vocab 256"));
  CHECK(sources.train->next().inputs.shape() == Shape{2, 512});
  CHECK(sources.val->next().inputs.shape() == Shape{4, 512});

  auto problem = [&](const std::string& from, const std::string& to) {
    std::string text = yaml;
    text.replace(text.find(from), from.size(), to);
    try {
      make_batch_sources(parse_run_config(text, "pb.yaml"), 2, 4);
    } catch (const ConfigError& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  CHECK(problem("entries: 20", "entries: 40")
            .starts_with("pb.yaml:5: data.seq_len: phonebook: seq_len 512 cannot hold a book of 40 entries with "
                         "6-digit numbers and 2 shots: the longest text needs seq_len >= 645"));
  CHECK(problem("shots: 2", "shots: 20") ==
        "pb.yaml:9: data.task_options.shots: shots 20 must be below entries = 20 (distinct entries besides the "
        "queried one)");
  CHECK(problem("digits: 6", "digits: 1") ==
        "pb.yaml:7: data.task_options.entries: 20 entries need unique 1-digit numbers; at most 5 are allowed");
  CHECK(problem("digits: 6", "digits: 0") == "pb.yaml:8: data.task_options.digits: must be >= 1, got 0");
  CHECK(problem("shots: 2", "shot: 2") ==
        "pb.yaml:9: data.task_options.shot: unknown option; did you mean 'shots'? (this task's options: entries, "
        "digits, shots)");
  CHECK(problem("vocab_size: 256", "vocab_size: 128").starts_with(
      "pb.yaml:2: model.vocab_size: 128 is smaller than the data's vocabulary of 256 tokens"));
}
