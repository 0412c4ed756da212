// An 8-bit RGB image in memory and its PNG encoding through libpng.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace sla_cli {

struct Rgb {
  uint8_t r = 0, g = 0, b = 0;
};

class RgbImage {
 public:
  RgbImage(int width, int height, Rgb background);

  int width() const { return width_; }
  int height() const { return height_; }
  void set(int x, int y, Rgb c);  // ignores pixels outside the image
  Rgb get(int x, int y) const;
  void fill_rect(int x, int y, int w, int h, Rgb c);
  const std::vector<uint8_t>& pixels() const { return pixels_; }  // row-major, 3 bytes per pixel

 private:
  int width_, height_;
  std::vector<uint8_t> pixels_;
};

// Writes `image` to `path` through an AtomicFile (a failure leaves an existing file as it was). Throws RunError
// naming `what` (e.g. "--png map.png") when the file cannot be written.
void write_png(const RgbImage& image, const std::string& path, const std::string& what);

}  // namespace sla_cli
