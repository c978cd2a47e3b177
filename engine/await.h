// Bridges callback-style completions (disk I/O threads, promotion waiters) into the
// connection coroutines.
#pragma once

#include <boost/asio/post.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <chrono>
#include <functional>
#include <memory>
#include <optional>

namespace kvtier {

// Calls start(done) and suspends until done(value) is called, from any thread; the coroutine
// resumes on its own executor (its strand) with that value.  done must be called once.
//
// A timer that never expires serves as the event: done posts onto the coroutine's executor,
// stores the value and cancels the timer, so the value and the wake-up are ordered with the
// coroutine by the strand, whether done runs before or after the coroutine starts waiting.
template <typename T>
boost::asio::awaitable<T> await_callback(std::function<void(std::function<void(T)>)> start) {
  struct Event {
    explicit Event(const boost::asio::any_io_executor& ex)
        : timer(ex, boost::asio::steady_timer::time_point::max()) {}
    boost::asio::steady_timer timer;
    std::optional<T> value;  // set on the coroutine's executor only
  };
  auto ex = co_await boost::asio::this_coro::executor;
  auto event = std::make_shared<Event>(ex);
  // done gives up its hold on the event and the executor as it runs: its owner (a disk
  // thread's finished operation, say) may destroy it after the coroutine has resumed and its
  // io_context is gone, and the timer must not be destroyed then.
  start([event, ex](T value) mutable {
    auto wake = std::move(event);
    auto target = std::move(ex);
    boost::asio::post(target, [wake = std::move(wake), value = std::move(value)]() mutable {
      wake->value = std::move(value);
      wake->timer.cancel();
    });
  });
  while (!event->value) {
    boost::system::error_code ec;
    co_await event->timer.async_wait(boost::asio::redirect_error(boost::asio::use_awaitable, ec));
  }
  co_return std::move(*event->value);
}

// await_callback() that gives up after `timeout`: returns `on_timeout` then, and a later
// done(value) is dropped (it still runs: the event outlives the coroutine's wait).
template <typename T>
boost::asio::awaitable<T> await_callback_for(std::function<void(std::function<void(T)>)> start,
                                             std::chrono::steady_clock::duration timeout,
                                             T on_timeout) {
  struct Event {
    Event(const boost::asio::any_io_executor& ex, std::chrono::steady_clock::duration t)
        : timer(ex, t) {}
    boost::asio::steady_timer timer;
    std::optional<T> value;  // set on the coroutine's executor only
    bool waiting = true;     // false once the coroutine stopped waiting
  };
  auto ex = co_await boost::asio::this_coro::executor;
  auto event = std::make_shared<Event>(ex, timeout);
  start([event, ex](T value) mutable {
    auto wake = std::move(event);
    auto target = std::move(ex);
    boost::asio::post(target, [wake = std::move(wake), value = std::move(value)]() mutable {
      if (!wake->waiting) return;
      wake->value = std::move(value);
      wake->timer.cancel();
    });
  });
  boost::system::error_code ec;
  co_await event->timer.async_wait(boost::asio::redirect_error(boost::asio::use_awaitable, ec));
  event->waiting = false;
  if (event->value) co_return std::move(*event->value);
  co_return on_timeout;  // the timer expired (ec is not operation_aborted)
}

}  // namespace kvtier
