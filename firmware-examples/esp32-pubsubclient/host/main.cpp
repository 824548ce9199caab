// Host build: runs the sketch's setup() once and loop() forever, as the Arduino core does.

#include <Arduino.h>

void setup();
void loop();

int main() {
  std::srand((unsigned)millis() ^ (unsigned)std::time(nullptr));
  setup();
  for (;;) loop();
}
