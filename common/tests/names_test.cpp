#include <catch2/catch.hpp>

#include <string>

#include "common/names.h"

using namespace kvtier;

TEST_CASE("valid_utf8 accepts well-formed UTF-8 and refuses the rest") {
  CHECK(valid_utf8(""));
  CHECK(valid_utf8("llama3-8b/fp16/v1/tenantA"));
  CHECK(valid_utf8("\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80"));  // é € 😀
  CHECK(valid_utf8("\xef\xbf\xbf\xf4\x8f\xbf\xbf"));          // U+FFFF, U+10FFFF
  CHECK_FALSE(valid_utf8("\xff"));
  CHECK_FALSE(valid_utf8("\x80"));              // a lone continuation byte
  CHECK_FALSE(valid_utf8("\xc3"));              // truncated
  CHECK_FALSE(valid_utf8("\xe2\x82"));          // truncated
  CHECK_FALSE(valid_utf8("\xc0\xaf"));          // overlong '/'
  CHECK_FALSE(valid_utf8("\xe0\x80\xaf"));      // overlong '/'
  CHECK_FALSE(valid_utf8("\xf0\x80\x80\xaf"));  // overlong '/'
  CHECK_FALSE(valid_utf8("\xed\xa0\x80"));      // a surrogate (U+D800)
  CHECK_FALSE(valid_utf8("\xf4\x90\x80\x80"));  // U+110000
  CHECK_FALSE(valid_utf8("\xf5\x80\x80\x80"));
  CHECK_FALSE(valid_utf8("ab\xe2\x28\xa1"));  // bad continuation
}

TEST_CASE("check_name names the field and refuses control characters and bad lengths") {
  CHECK(check_name("namespace", "a/b", 16).is_ok());
  auto empty = check_name("namespace", "", 16);
  CHECK(empty.code() == Errc::kInvalidArgument);
  CHECK(empty.message().find("namespace") != std::string::npos);
  CHECK(check_name("namespace", std::string(17, 'a'), 16).code() == Errc::kInvalidArgument);
  auto nul = check_name("tensor name", std::string("k\0v", 3), 16);
  CHECK(nul.code() == Errc::kInvalidArgument);
  CHECK(nul.message().find("tensor name") != std::string::npos);
  CHECK(check_name("modality", "a\nb", 16).code() == Errc::kInvalidArgument);
  auto bad = check_name("namespace", "ns\xff", 16);
  CHECK(bad.code() == Errc::kInvalidArgument);
  CHECK(bad.message().find("UTF-8") != std::string::npos);
  CHECK(bad.message().find('\xff') == std::string::npos);  // never echoed
}
